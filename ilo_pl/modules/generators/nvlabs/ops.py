"""Reference PyTorch operations of NVIDIA's StyleGAN networks, with NVIDIA's conventions.

Written from the published architecture and the facts measured on NVIDIA's
files (``../shared/fixtures/nvlabs/README.md``): FIR filters are stored as
``[fh, fw]`` tensors indexed ``f[y, x]``; :func:`upfirdn2d` convolves (flips
the filter) unless ``flip_filter``; padding is ``[x0, x1, y0, y1]``; a 2-D
filter's gain is applied once. Real snapshots have symmetric filters, so a
wrong flip would go unnoticed there; the fixtures' perturbed filters catch it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ilo_pl.modules.generators.stylegan2.layers import MODCONV_IMPLS, resolve_modconv_impl

__all__ = ["MODCONV_IMPLS", "bias_act", "conv2d_resample", "modulated_conv2d", "normalize_2nd_moment", "upfirdn2d"]

#: Default gains of the activations (``lrelu``: ``sqrt(2)``).
ACT_GAIN = {"linear": 1.0, "lrelu": math.sqrt(2.0)}


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Scale each vector to unit mean square along ``dim``."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(
    x: Tensor,
    b: Optional[Tensor] = None,
    act: str = "linear",
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
    alpha: float = 0.2,
) -> Tensor:
    """``clamp(act(x + b) * gain)``: bias on dim 1, then the activation, its gain and the clamp."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([1, -1] + [1] * (x.dim() - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, alpha)
    elif act != "linear":
        raise ValueError(f"unsupported activation {act!r} (known: linear, lrelu)")
    gain = ACT_GAIN[act] if gain is None else float(gain)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def upfirdn2d(
    x: Tensor,
    f: Tensor,
    up: int = 1,
    down: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    flip_filter: bool = False,
    gain: float = 1.0,
) -> Tensor:
    """Upsample (zero insertion), pad/crop, FIR-filter and downsample ``x`` ``[B, C, H, W]``.

    Args:
        x: input.
        f: 2-D filter ``[fh, fw]`` (``f[y, x]``).
        up: upsampling factor (both axes).
        down: downsampling factor (both axes).
        padding: ``[x0, x1, y0, y1]`` (negative values crop).
        flip_filter: correlate instead of convolve.
        gain: overall gain (applied to the filter).
    """
    b, c, h, w = x.shape
    px0, px1, py0, py1 = (int(p) for p in padding)
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.dim() / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.dim())))
    if f.dim() == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:  # separable 1-D filter: rows then columns
        x = F.conv2d(x, f[None, None, None].expand(c, 1, 1, f.shape[0]), groups=c)
        x = F.conv2d(x, f[None, None, :, None].expand(c, 1, f.shape[0], 1), groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def conv2d_resample(
    x: Tensor,
    w: Tensor,
    f: Optional[Tensor] = None,
    up: int = 1,
    padding: int = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> Tensor:
    """Convolution with optional 2x FIR upsampling, in NVIDIA's padding and flip conventions.

    ``up=1``: an ordinary correlation (``flip_weight=True``) with ``padding``.
    ``up>1`` with a 1x1 kernel: the convolution, then FIR upsampling.
    ``up>1`` otherwise: a stride-``up`` transposed convolution, then the FIR
    filter with the padding that makes the result ``up`` times larger.
    """
    out_ch, in_per_group, kh, kw = w.shape
    if up == 1:
        if not flip_weight:
            w = w.flip([2, 3])
        return F.conv2d(x, w, padding=padding, groups=groups)
    assert f is not None, "upsampling needs the FIR filter"
    fh, fw = f.shape[-2], (f.shape[-1] if f.dim() == 2 else f.shape[-1])
    px0 = padding + (fw + up - 1) // 2
    px1 = padding + (fw - up) // 2
    py0 = padding + (fh + up - 1) // 2
    py1 = padding + (fh - up) // 2
    if kh == 1 and kw == 1:
        if not flip_weight:
            w = w.flip([2, 3])
        x = F.conv2d(x, w, groups=groups)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up**2)
    # Transposed convolution: weights [in, out / groups, kh, kw] per group.
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_ch // groups, kh, kw)
    px0 -= kw - 1
    px1 -= kw - up
    py0 -= kh - 1
    py1 -= kh - up
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    if flip_weight:  # a transposed convolution flips by itself
        wt = wt.flip([2, 3])
    x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up**2)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    noise: Optional[Tensor] = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: Optional[Tensor] = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    impl: str = "auto",
) -> Tensor:
    """StyleGAN-2's modulated convolution ``conv(x, W * s_b) * d_b (+ noise)``, per sample ``b``.

    Two forms, equal up to float rounding (``impl``, the same values and rule
    as the rosinality generator's ``modconv_impl``,
    :func:`~ilo_pl.modules.generators.stylegan2.layers.resolve_modconv_impl`):
    ``"fused"`` builds each sample's modulated (demodulated) weight and runs
    one grouped convolution; ``"unfused"`` scales the activations by the
    styles, convolves with the shared weight and scales the output by the
    demodulation coefficients; ``"auto"`` picks per call, from the batch size
    and whether ``styles`` need a gradient (``styles.requires_grad`` with
    autograd recording), as the rosinality generator's layers do.

    In float16 (GPU only) the weight and styles are first rescaled by their
    max-norms to avoid overflow, as NVIDIA does; with demodulation the
    rescaling cancels out.

    Args:
        x: ``[B, in, H, W]``.
        weight: ``[out, in, kh, kw]``.
        styles: ``[B, in]``.
        noise: added after demodulation (broadcast ``[B or 1, 1, H, W]``).
        up: 1 or 2.
        padding: convolution padding.
        resample_filter: FIR filter of the upsampling.
        demodulate: normalise each output channel.
        flip_weight: NVIDIA's flag (``False`` for upsampling layers).
        impl: ``"auto"``, ``"fused"`` or ``"unfused"``.
    """
    b = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    # The fused form's backward costs a convolution per sample only when the styles need a
    # gradient (a stage that frees the latent), so "auto" asks about the styles themselves.
    style_grad = styles.requires_grad and torch.is_grad_enabled()
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    dcoefs = None
    form = resolve_modconv_impl(impl, b, x.device, style_grad=style_grad)
    if form == "unfused":
        if demodulate:
            dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [B, out]
        x = x * styles.to(x.dtype).reshape(b, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding, flip_weight=flip_weight)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(b, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x
    w = weight.unsqueeze(0) * styles.reshape(b, 1, -1, 1, 1)  # [B, out, in, kh, kw]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(b, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, padding=padding, groups=b, flip_weight=flip_weight)
    x = x.reshape(b, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def as_float(value: Union[float, int, Tensor, None]) -> Optional[float]:
    """A recorded number (numpy scalar, tensor, int) as a Python float (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return float(value.item())
    return float(value)
