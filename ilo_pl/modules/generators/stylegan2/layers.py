"""The layers of StyleGAN-2 (config-e/f), in the reference port's module layout.

Each layer has the state-dict keys of rosinality's ``model.py`` (named in its
docstring), so :class:`~ilo_pl.modules.generators.stylegan2.StyleGAN2Generator`
loads that port's ``g_ema`` with ``strict=True``. Resampling and the fused bias
+ leaky ReLU go through :mod:`ilo_pl.ops` (CUDA kernels with a pure-PyTorch
fallback).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.ops.fused_act import FusedLeakyReLU, fused_leaky_relu
from ilo_pl.ops.upfirdn2d import upfirdn2d

__all__ = [
    "Blur",
    "ConstantInput",
    "EqualLinear",
    "ModulatedConv2d",
    "NoiseInjection",
    "PixelNorm",
    "StyledConv",
    "ToRGB",
    "Upsample",
]


def _fir_kernel(taps: Sequence[float]) -> Tensor:
    """2-D separable FIR kernel from 1-D taps, normalised to sum 1."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    k = k[None, :] * k[:, None] if k.dim() == 1 else k
    return k / k.sum()


class PixelNorm(nn.Module):
    """Normalise each latent to unit mean square (mapping network's first layer)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights scaled at run time).

    State-dict keys ``weight`` ``[out, in]`` and ``bias`` ``[out]``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation == "fused_lrelu":
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)


class ConstantInput(nn.Module):
    """The learnt 4x4 constant the synthesis network starts from (key ``input``)."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class Blur(nn.Module):
    """FIR low-pass (``upfirdn2d`` without resampling); buffer ``kernel``."""

    def __init__(self, taps: Sequence[float], pad: Tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        # After zero-insertion upsampling the kernel's gain must be factor^2.
        self.register_buffer("kernel", _fir_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the RGB skip; buffer ``kernel``."""

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        kernel = _fir_kernel(taps) * factor**2
        self.register_buffer("kernel", kernel)
        self.factor = factor
        p = kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated (and optionally demodulated) convolution, optionally 2x upsampling.

    Computed as "modulate the input, convolve with the shared weight, scale the
    output by the demodulation factor" -- the same linear map as a per-sample
    modulated weight, without materialising ``B`` weights.
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        # Registered after `blur`, as in the reference port (same state-dict order).
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        s = self.modulation(style)  # [B, in]
        weight = self.weight[0] * self.scale  # [out, in, k, k]
        x = x * s[:, :, None, None].to(x.dtype)
        if self.upsample:
            # Transposed convolution, stride 2, then the FIR blur.
            out = F.conv_transpose2d(x, weight.transpose(0, 1).contiguous().to(x.dtype), stride=2)
        else:
            out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            energy = weight.pow(2).sum(dim=(2, 3))  # [out, in]
            demod = torch.rsqrt(s.pow(2) @ energy.t() + 1e-8)  # [B, out]
            out = out * demod[:, :, None, None].to(out.dtype)
        if self.upsample:
            out = self.blur(out)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channel}, {self.out_channel}, kernel_size={self.kernel_size}, "
            f"upsample={self.upsample}, demodulate={self.demodulate}"
        )


class NoiseInjection(nn.Module):
    """Add a learnt multiple (key ``weight`` ``[1]``) of a noise map."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        if noise is None:
            b, _, h, w = x.shape
            noise = x.new_empty(b, 1, h, w).normal_()
        return x + self.weight * noise


class StyledConv(nn.Module):
    """Modulated conv -> noise -> fused bias + leaky ReLU (keys ``conv``, ``noise``, ``activate``)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channel, out_channel, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: Tensor, style: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB plus the upsampled skip (keys ``conv``, ``bias``, ``upsample``)."""

    def __init__(
        self, in_channel: int, style_dim: int, upsample: bool = True, blur_kernel: Sequence[float] = (1, 3, 3, 1)
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Optional[Tensor] = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out
