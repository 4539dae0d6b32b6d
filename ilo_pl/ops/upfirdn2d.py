"""``upfirdn2d``: upsample, FIR-filter, downsample -- StyleGAN-2's resampling op.

For each channel of a ``[B, C, H, W]`` tensor, separately per axis:

1. **up**: insert ``up - 1`` zeros after every sample;
2. **pad**: add ``pad0`` zeros before and ``pad1`` after (negative values crop);
3. **fir**: convolve (true convolution, kernel flipped) with the 2-D kernel,
   keeping only fully overlapping positions;
4. **down**: keep every ``down``-th sample, starting at the first.

The output size per axis is ``(in * up + pad0 + pad1 - k) // down + 1``.

Two implementations compute it, picked by ``impl``: ``"ref"``, pure PyTorch
(any device; differentiable by autograd, so ``gradcheck`` runs on it; the
specification), and ``"cuda"``, a CUDA kernel that :mod:`ilo_pl.ops._cuda`
compiles on first use (CUDA tensors, a kernel that needs no gradient).
``"auto"`` (the default) runs ``"cuda"`` where it can and ``ILO_PL_OPS=native``
is not set, and ``"ref"`` otherwise. Both compute in float32 for half/bfloat16
inputs and with autocast off (the result is float32).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ilo_pl.ops._cuda import OP_IMPLS, extension_for, load_extension, require_extension
from ilo_pl.policy import check_impl, compute_dtype, no_autocast

IntPair = Union[int, Sequence[int]]


def _pair(value: IntPair, name: str) -> Tuple[int, int]:
    """``(x, y)`` from an int or a pair; both must be >= 1."""
    if isinstance(value, int):
        out = (value, value)
    else:
        out = tuple(int(v) for v in value)
        if len(out) != 2:
            raise ValueError(f"{name} must be an int or an (x, y) pair; got {value!r}")
    if min(out) < 1:
        raise ValueError(f"{name} factors must be >= 1; got {value!r}")
    return out  # type: ignore[return-value]


def _pads(pad: Sequence[int]) -> Tuple[int, int, int, int]:
    """``(x0, x1, y0, y1)`` from ``(p0, p1)`` (same on both axes) or four values."""
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad  # type: ignore[return-value]
    raise ValueError(f"pad must be (pad0, pad1) or (x0, x1, y0, y1); got {pad!r}")


def _out_len(n: int, up: int, down: int, p0: int, p1: int, k: int) -> int:
    return (n * up + p0 + p1 - k) // down + 1


def _check(x: Tensor, kernel: Tensor, up, down, pads) -> None:  # noqa: ANN001
    if not torch.is_tensor(x) or x.dim() != 4:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"upfirdn2d expects a [B, C, H, W] tensor; got {got}")
    if not torch.is_tensor(kernel) or kernel.dim() != 2:
        got = tuple(kernel.shape) if torch.is_tensor(kernel) else type(kernel).__name__
        raise ValueError(f"upfirdn2d expects a 2-D kernel [kh, kw]; got {got}")
    kh, kw = kernel.shape
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pads
    ow = _out_len(x.shape[3], ux, dx, px0, px1, kw)
    oh = _out_len(x.shape[2], uy, dy, py0, py1, kh)
    if ow < 1 or oh < 1:
        raise ValueError(
            f"upfirdn2d would produce an empty output ({oh}x{ow}) from a {tuple(x.shape[2:])} input "
            f"with kernel {tuple(kernel.shape)}, up={up}, down={down}, pad={pads}; pad more"
        )


def _select(full: Tensor, dim: int, start: int, step: int, length: int) -> Tensor:
    """``full[start + step * o]`` for ``o < length`` along ``dim``, zero outside ``full``."""
    n = full.shape[dim]
    before = max(-start, 0)
    after = max(start + step * (length - 1) + 1 - n, 0)
    if before or after:
        pads = [0, 0] * (full.dim() - 1 - dim) + [before, after]
        full = F.pad(full, pads)
    start += before
    return full.narrow(dim, start, step * (length - 1) + 1)[(slice(None),) * dim + (slice(None, None, step),)]


def upfirdn2d_native(
    x: Tensor, kernel: Tensor, up: IntPair = 1, down: IntPair = 1, pad: Sequence[int] = (0, 0)
) -> Tensor:
    """The pure-PyTorch ``upfirdn2d``, ``impl="ref"`` (computes in ``x``'s dtype; see :func:`upfirdn2d`).

    Uses depthwise (grouped) convolutions, which CPU backends run far faster
    than a single-channel convolution over ``B * C`` planes: without
    upsampling, a strided convolution of the padded input; with it, a strided
    transposed convolution (zero insertion and filtering in one op, the
    "full" convolution of the upsampled signal) from which the outputs are
    picked.
    """
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = _pair(up, "up"), _pair(down, "down"), _pads(pad)
    c = x.shape[1]
    kh, kw = kernel.shape
    k = kernel.to(x.dtype)
    if ux == 1 and uy == 1:
        # Positive pads add zeros, negative ones crop (F.pad does both).
        xp = F.pad(x, [px0, px1, py0, py1])
        # conv2d is a cross-correlation: flip the kernel for a true convolution.
        weight = torch.flip(k, [0, 1]).expand(c, 1, kh, kw).contiguous()
        return F.conv2d(xp, weight, stride=(dy, dx), groups=c)
    # full[p] = sum_n x[n] k[p - n * up]; output o reads full[o * down + k - 1 - pad0].
    weight = k.expand(c, 1, kh, kw).contiguous()
    full = F.conv_transpose2d(x, weight, stride=(uy, ux), groups=c)
    oh = _out_len(x.shape[2], uy, dy, py0, py1, kh)
    ow = _out_len(x.shape[3], ux, dx, px0, px1, kw)
    out = _select(full, 2, kh - 1 - py0, dy, oh)
    return _select(out, 3, kw - 1 - px0, dx, ow)


def grad_geometry(
    in_hw: Tuple[int, int],
    kernel_hw: Tuple[int, int],
    up: IntPair,
    down: IntPair,
    pad: Sequence[int],
) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int, int, int]]:
    """Arguments of the ``upfirdn2d`` that computes the gradient w.r.t. the input.

    The adjoint of ``upfirdn2d(., k, up, down, pad)`` is
    ``upfirdn2d(., flip(k), up=down, down=up, pad=grad_pad)``; per axis
    ``grad_pad0 = k - 1 - pad0`` and ``grad_pad1`` is chosen so the result has
    the input's size. Returns ``(up, down, pad)`` of that call.
    """
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = _pair(up, "up"), _pair(down, "down"), _pads(pad)
    (h, w), (kh, kw) = in_hw, kernel_hw
    ow, oh = _out_len(w, ux, dx, px0, px1, kw), _out_len(h, uy, dy, py0, py1, kh)
    gx0, gy0 = kw - 1 - px0, kh - 1 - py0
    gx1 = w * ux - ux + 1 + px0 - ow * dx
    gy1 = h * uy - uy + 1 + py0 - oh * dy
    return (dx, dy), (ux, uy), (gx0, gx1, gy0, gy1)


class _UpFirDn2dCUDA(torch.autograd.Function):
    """The CUDA kernel with its adjoint as backward (itself differentiable)."""

    @staticmethod
    def forward(ctx, x, kernel, up, down, pads):  # noqa: ANN001, ANN205
        ext = load_extension()
        ctx.save_for_backward(kernel)
        ctx.geometry = (tuple(x.shape[2:]), up, down, pads)
        (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pads
        return ext.upfirdn2d(x.contiguous(), kernel.contiguous(), ux, uy, dx, dy, px0, px1, py0, py1)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (kernel,) = ctx.saved_tensors
        in_hw, up, down, pads = ctx.geometry
        g_up, g_down, g_pad = grad_geometry(in_hw, tuple(kernel.shape), up, down, pads)
        # The flipped kernel needs no gradient either, so the backward stays on the CUDA kernel.
        grad_x = _dispatch(grad, torch.flip(kernel, [0, 1]), g_up, g_down, g_pad, "cuda")
        return grad_x, None, None, None, None


def _dispatch(x: Tensor, kernel: Tensor, up, down, pads, impl: str) -> Tensor:  # noqa: ANN001
    if impl == "cuda":
        require_extension("upfirdn2d", x)
        if kernel.requires_grad:
            raise ValueError(
                "upfirdn2d: impl='cuda' gives no gradient w.r.t. the FIR kernel, which requires grad; "
                "use impl='ref' or 'auto' (which picks it), or pass kernel.detach()"
            )
    elif impl == "auto":
        # The kernel's CUDA backward gives no kernel gradient: a learnt kernel takes the autograd path.
        impl = "cuda" if not kernel.requires_grad and extension_for(x) is not None else "ref"
    if impl == "cuda":
        return _UpFirDn2dCUDA.apply(x, kernel, up, down, pads)
    return upfirdn2d_native(x, kernel, up, down, pads)


def upfirdn2d(
    x: Tensor,
    kernel: Tensor,
    up: IntPair = 1,
    down: IntPair = 1,
    pad: Sequence[int] = (0, 0),
    impl: str = "auto",
) -> Tensor:
    """Upsample, FIR-filter and downsample each channel of ``x``.

    Args:
        x: ``[B, C, H, W]`` input.
        kernel: ``[kh, kw]`` FIR kernel (applied as a true convolution).
        up: upsampling factor, an int or ``(x, y)``.
        down: downsampling factor, an int or ``(x, y)``.
        pad: ``(pad0, pad1)`` applied to both axes, or ``(x0, x1, y0, y1)``;
            negative values crop.
        impl: ``"ref"`` (pure PyTorch, the specification), ``"cuda"`` (the
            CUDA kernel; CUDA tensors and a kernel that does not require
            grad) or ``"auto"`` (``"cuda"`` where it runs and
            ``ILO_PL_OPS=native`` is not set, else ``"ref"``).

    Returns:
        ``[B, C, H', W']`` with ``H' = (H * up + pad_y0 + pad_y1 - kh) // down + 1``
        (likewise ``W'``), in ``x``'s dtype, or float32 for half/bfloat16 input.

    Raises:
        ValueError: on a wrong-rank input or kernel, factors < 1, a malformed
            ``pad``, an empty output, an unknown ``impl``, or ``"cuda"`` with
            a non-CUDA ``x`` or a kernel that requires grad.
        RuntimeError: ``impl="cuda"`` and the CUDA kernels cannot be built.
    """
    check_impl("upfirdn2d", impl, OP_IMPLS)
    up_, down_, pads = _pair(up, "up"), _pair(down, "down"), _pads(pad)
    _check(x, kernel, up_, down_, pads)
    dtype = compute_dtype(x)
    with no_autocast(x):
        return _dispatch(x.to(dtype), kernel.to(device=x.device, dtype=dtype), up_, down_, pads, impl)
