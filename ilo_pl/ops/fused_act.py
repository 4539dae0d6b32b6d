"""Fused bias + leaky ReLU with a gain: StyleGAN-2's activation.

``fused_leaky_relu(x, b) = scale * leaky_relu(x + b, negative_slope)`` with the
bias broadcast along dim 1, ``negative_slope = 0.2`` and ``scale = sqrt(2)``
(the gain that keeps the activations' second moment). Two implementations,
picked by ``impl``: ``"ref"``, pure PyTorch (any device; the specification),
and ``"cuda"``, a CUDA kernel JIT-built by :mod:`ilo_pl.ops._cuda` (CUDA
tensors). ``"auto"`` (the default) runs ``"cuda"`` on CUDA tensors where the
kernel builds, unless ``ILO_PL_OPS=native``, and ``"ref"`` otherwise.
Half/bfloat16 inputs and autocast are computed in float32 (the result is
float32).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.ops._cuda import OP_IMPLS, extension_for, load_extension, require_extension
from ilo_pl.policy import check_impl, compute_dtype, no_autocast

DEFAULT_SLOPE = 0.2
DEFAULT_SCALE = math.sqrt(2.0)


def _bias_view(bias: Tensor, x: Tensor) -> Tensor:
    return bias.view(1, bias.shape[0], *([1] * (x.dim() - 2)))


def fused_leaky_relu_native(
    x: Tensor, bias: Optional[Tensor] = None, negative_slope: float = DEFAULT_SLOPE, scale: float = DEFAULT_SCALE
) -> Tensor:
    """The pure-PyTorch path, ``impl="ref"`` (computes in ``x``'s dtype, autocast as it is)."""
    if bias is not None:
        x = x + _bias_view(bias.to(x.dtype), x)
    return F.leaky_relu(x, negative_slope) * scale


class _LReLUGradCUDA(torch.autograd.Function):
    """``grad -> grad * (scale if out > 0 else slope * scale)``; linear in ``grad``."""

    @staticmethod
    def forward(ctx, grad, out, negative_slope, scale):  # noqa: ANN001, ANN205
        ctx.save_for_backward(out)
        ctx.consts = (negative_slope, scale)
        empty = grad.new_empty(0)
        return load_extension().fused_bias_act(grad.contiguous(), empty, out, 1, negative_slope, scale)

    @staticmethod
    def backward(ctx, gg):  # noqa: ANN001, ANN205
        (out,) = ctx.saved_tensors
        # Piecewise linear: the second derivative w.r.t. the input is zero.
        return _LReLUGradCUDA.apply(gg.contiguous(), out, *ctx.consts), None, None, None


class _FusedLReLUCUDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, negative_slope, scale):  # noqa: ANN001, ANN205
        empty = x.new_empty(0)
        b = bias.contiguous() if bias is not None else empty
        out = load_extension().fused_bias_act(x.contiguous(), b, empty, 0, negative_slope, scale)
        ctx.save_for_backward(out)
        ctx.consts = (negative_slope, scale)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (out,) = ctx.saved_tensors
        grad_x = _LReLUGradCUDA.apply(grad, out, *ctx.consts)
        grad_b = None
        if ctx.has_bias:
            dims = [0] + list(range(2, grad_x.dim()))
            grad_b = grad_x.sum(dims)
        return grad_x, grad_b, None, None


def fused_leaky_relu(
    x: Tensor,
    bias: Optional[Tensor] = None,
    negative_slope: float = DEFAULT_SLOPE,
    scale: float = DEFAULT_SCALE,
    impl: str = "auto",
) -> Tensor:
    """``scale * leaky_relu(x + bias, negative_slope)``, bias broadcast along dim 1.

    Args:
        x: ``[B, C, ...]`` input (at least 2-D).
        bias: ``[C]`` bias, or ``None``.
        negative_slope: slope for negative inputs (StyleGAN-2: 0.2).
        scale: output gain (StyleGAN-2: ``sqrt(2)``).
        impl: ``"ref"`` (pure PyTorch, the specification), ``"cuda"`` (the
            CUDA kernel; CUDA tensors) or ``"auto"`` (``"cuda"`` where it
            runs and ``ILO_PL_OPS=native`` is not set, else ``"ref"``).

    Returns:
        A tensor of ``x``'s shape, in ``x``'s dtype or float32 for half/bfloat16.

    Raises:
        ValueError: if ``x`` has fewer than 2 dims, ``bias`` is not ``[C]``,
            ``impl`` is unknown, or ``"cuda"`` with a non-CUDA ``x``.
        RuntimeError: ``impl="cuda"`` and the CUDA kernels cannot be built.
    """
    check_impl("fused_leaky_relu", impl, OP_IMPLS)
    if x.dim() < 2:
        raise ValueError(f"fused_leaky_relu expects [B, C, ...]; got shape {tuple(x.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != x.shape[1]):
        raise ValueError(
            f"fused_leaky_relu: bias must be [C] = [{x.shape[1]}] for input {tuple(x.shape)}; "
            f"got {tuple(bias.shape)}"
        )
    dtype = compute_dtype(x)
    with no_autocast(x):
        x = x.to(dtype)
        bias = None if bias is None else bias.to(device=x.device, dtype=dtype)
        if impl == "cuda":
            require_extension("fused_leaky_relu", x)
        elif impl == "auto":
            impl = "cuda" if extension_for(x) is not None else "ref"
        if impl == "cuda":
            return _FusedLReLUCUDA.apply(x, bias, float(negative_slope), float(scale))
        return fused_leaky_relu_native(x, bias, negative_slope, scale)


class FusedLeakyReLU(nn.Module):
    """Module form with a learnt bias (state-dict key ``bias``, as in the reference port).

    Args:
        channel: number of channels ``C`` (size of the bias).
        bias: whether to learn a bias.
        negative_slope: slope for negative inputs.
        scale: output gain.
        impl: implementation, as for :func:`fused_leaky_relu`.
    """

    def __init__(
        self,
        channel: int,
        bias: bool = True,
        negative_slope: float = DEFAULT_SLOPE,
        scale: float = DEFAULT_SCALE,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        check_impl("FusedLeakyReLU", impl, OP_IMPLS)
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale
        self.impl = impl

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale, impl=self.impl)

    def extra_repr(self) -> str:
        extra = "" if self.impl == "auto" else f", impl={self.impl!r}"
        return f"negative_slope={self.negative_slope}, scale={self.scale:.4f}{extra}"
