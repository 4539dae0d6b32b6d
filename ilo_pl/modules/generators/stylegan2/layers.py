"""The layers of StyleGAN-2 (config-e/f), in the reference port's module layout.

Each layer has the state-dict keys of rosinality's ``model.py`` (named in its
docstring), so :class:`~ilo_pl.modules.generators.stylegan2.StyleGAN2Generator`
loads that port's ``g_ema`` with ``strict=True``. Resampling and the fused bias
+ leaky ReLU go through :mod:`ilo_pl.ops` (CUDA kernels with a pure-PyTorch
fallback).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.ops.fused_act import FusedLeakyReLU, fused_leaky_relu
from ilo_pl.ops.upfirdn2d import upfirdn2d
from ilo_pl.policy import check_impl

__all__ = [
    "Blur",
    "ConstantInput",
    "EqualLinear",
    "MODCONV_IMPLS",
    "ModconvImplOption",
    "ModulatedConv2d",
    "NoiseInjection",
    "PixelNorm",
    "StyledConv",
    "ToRGB",
    "Upsample",
    "resolve_modconv_impl",
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


#: Values of ``ModulatedConv2d(impl=...)`` and ``StyleGAN2Generator(modconv_impl=...)``.
MODCONV_IMPLS = ("auto", "fused", "unfused")


def resolve_modconv_impl(
    impl: str,
    batch: int,
    device: Optional[Union[torch.device, str]] = None,
    style_grad: Optional[bool] = None,
) -> str:
    """The form a modulated convolution runs in: ``"fused"`` or ``"unfused"``.

    ``"fused"`` and ``"unfused"`` are returned as given. ``"auto"`` picks
    ``"fused"`` only for a single sample whose styles need no gradient (renders
    under ``torch.no_grad()``, stages that keep the latent fixed), and
    ``"unfused"`` otherwise:

    * with a gradient w.r.t. the styles (every ILO step that frees the
      latent), the fused form's backward pass computes the gradient of every
      sample's modulated weight, a convolution as costly as the forward one,
      which the unfused form never needs (its style gradient is a sum over
      the scaled activations): an ILO step of a 256x256 StyleGAN-2 costs 1.6x
      the unfused one at batch 1 on the CPU (1.07x on the tiny fixture);
    * above batch 1 the fused form runs one group per sample, the unfused one
      a single convolution with the shared weight, which batches like any
      convolution: the fused step costs 1.1-1.7x the unfused one per image at
      batch 2-16;
    * at batch 1 without style gradients the fused form is one ordinary
      convolution with a modulated copy of the weight and saves the two
      activation-sized scalings: a no-grad render of the tiny fixture takes
      23% less time fused, one of a 128x128 generator within 3% of unfused.

    Measured on the CPU (``python -m benchmarks.speed --sections batching``,
    docs/performance.md, "Batching StyleGAN-2"); the same rule is used on every
    device. On GPUs it is an assumption, not a measurement: the gradient
    argument is a count of operations and holds there too, and NVIDIA's
    StyleGAN-2 code, too, runs the fused form only outside training.

    Args:
        impl: one of :data:`MODCONV_IMPLS`.
        batch: the number of samples of the call.
        device: where the call runs (the rule is the same on every device for now).
        style_grad: whether the call records a gradient w.r.t. the styles;
            ``None``: whenever autograd records (``torch.is_grad_enabled()``),
            the cautious guess for callers that do not say.

    Raises:
        ValueError: on an unknown ``impl``.
    """
    check_impl("ModulatedConv2d", impl, MODCONV_IMPLS)
    if impl != "auto":
        return impl
    if style_grad is None:
        style_grad = torch.is_grad_enabled()
    return "fused" if batch == 1 and not style_grad else "unfused"


class ModconvImplOption:
    """A generator's ``modconv_impl``: a settable property that reaches each of its modulated convolutions.

    For ``nn.Module`` generators (the rosinality port's and NVIDIA's StyleGAN-2);
    :attr:`_modconv_layers` names the layer types that carry an ``impl``
    attribute (one of :data:`MODCONV_IMPLS`).
    """

    #: The layer types whose ``impl`` follows the generator's ``modconv_impl``.
    _modconv_layers: Tuple[type, ...] = ()

    @property
    def modconv_impl(self) -> str:
        """How the modulated convolutions run (``"auto"``, ``"fused"`` or ``"unfused"``); settable."""
        return self._modconv_impl

    @modconv_impl.setter
    def modconv_impl(self, impl: str) -> None:
        check_impl(f"{type(self).__name__}.modconv_impl", impl, MODCONV_IMPLS)
        self.__dict__["_modconv_impl"] = impl
        for module in self.modules():
            if isinstance(module, self._modconv_layers):
                module.impl = impl


class ModulatedConv2d(nn.Module):
    """Style-modulated (and optionally demodulated) convolution, optionally 2x upsampling.

    The layer maps ``x`` ``[B, in, H, W]`` and a style ``[B, style_dim]`` to
    ``conv(x, W * s_b) * d_b`` per sample ``b``, where ``s_b = modulation(style_b)``
    ``[in]`` scales the weight's input channels and, with ``demodulate``,
    ``d_b[o] = 1 / sqrt(sum_{i,k} (W[o, i, k] s_b[i])^2 + 1e-8)`` normalises
    each output channel (Karras et al. 2020, eq. 1-3). Two forms compute it,
    equal up to float rounding (``impl``):

    * ``"fused"``: the modulated, demodulated weight of every sample is built
      and applied as one grouped convolution (a group per sample; at batch 1
      one ordinary convolution);
    * ``"unfused"``: the input is scaled by ``s_b``, convolved with the shared
      weight (one ordinary convolution for the whole batch), and the output
      scaled by ``d_b``: no per-sample weights, so it batches like any
      convolution;
    * ``"auto"`` (default): :func:`resolve_modconv_impl` picks one per call
      from the batch size and whether the styles need a gradient: the
      unfused form, but for single samples rendered without style gradients.

    With ``upsample`` the convolution is a stride-2 transposed convolution
    followed by the FIR blur (:class:`Blur`) in both forms.

    Args:
        in_channel: input channels.
        out_channel: output channels.
        kernel_size: side of the square kernel.
        style_dim: width of the style vector.
        demodulate: normalise each output channel (off in ToRGB).
        upsample: 2x upsampling (transposed convolution, then blur).
        blur_kernel: FIR taps of the blur.
        impl: one of :data:`MODCONV_IMPLS`.

    Raises:
        ValueError: on an unknown ``impl``.
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
        impl: str = "auto",
    ) -> None:
        super().__init__()
        check_impl("ModulatedConv2d", impl, MODCONV_IMPLS)
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.impl = impl
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
        style_grad = s.requires_grad and torch.is_grad_enabled()
        if resolve_modconv_impl(self.impl, x.shape[0], x.device, style_grad) == "fused":
            out = self._fused(x, s)
        else:
            out = self._unfused(x, s)
        if self.upsample:
            out = self.blur(out)
        return out

    def _unfused(self, x: Tensor, s: Tensor) -> Tensor:
        """Scale the input by ``s``, one convolution with the shared weight, scale the output by ``d``."""
        weight = self.weight[0] * self.scale  # [out, in, k, k]
        x = x * s[:, :, None, None].to(x.dtype)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1).contiguous().to(x.dtype), stride=2)
        else:
            out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            energy = weight.pow(2).sum(dim=(2, 3))  # [out, in]
            demod = torch.rsqrt(s.pow(2) @ energy.t() + 1e-8)  # [B, out]
            out = out * demod[:, :, None, None].to(out.dtype)
        return out

    def _fused(self, x: Tensor, s: Tensor) -> Tensor:
        """Per-sample modulated (and demodulated) weights, applied as one grouped convolution."""
        b, cin, h, w = x.shape
        cout, k = self.out_channel, self.kernel_size
        weight = self.weight * self.scale * s[:, None, :, None, None]  # [B, out, in, k, k]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
        x = x.reshape(1, b * cin, h, w)
        if self.upsample:
            # conv_transpose2d's weight is [in, out / groups, k, k] per group: [B * in, out, k, k].
            weight = weight.transpose(1, 2).reshape(b * cin, cout, k, k)
            out = F.conv_transpose2d(x, weight.to(x.dtype), stride=2, groups=b)
        else:
            out = F.conv2d(x, weight.reshape(b * cout, cin, k, k).to(x.dtype), padding=self.padding, groups=b)
        return out.reshape(b, cout, out.shape[2], out.shape[3])

    def extra_repr(self) -> str:
        impl = "" if self.impl == "auto" else f", impl={self.impl!r}"
        return (
            f"{self.in_channel}, {self.out_channel}, kernel_size={self.kernel_size}, "
            f"upsample={self.upsample}, demodulate={self.demodulate}{impl}"
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
