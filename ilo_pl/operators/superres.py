"""Super-resolution: antialiased bicubic downsampling by an integer factor.

The filter is Keys' cubic convolution kernel with ``a = -0.5`` stretched by the
factor ``s`` (support ``[-2s, 2s]`` input pixels, weights ``k(d / s) / s``,
renormalised to sum to 1): the proper downsampling filter used by PIL's and
Matlab's ``imresize`` bicubic. Output pixel ``j`` is centred on input
coordinate ``(j + 0.5) * s - 0.5`` (pixel centres aligned, no shift).

``A`` is a separable strided convolution (rows, then columns) applied to the
image padded with an explicit index map (``reflect`` by default). Because the
padding is a gather, its adjoint is the matching scatter-add, so
:meth:`BicubicDownsample.A_adjoint` (transposed strided convolution + scatter)
is the exact adjoint for every padding mode. The interior matches PIL's
bicubic resize; only the border handling differs (PIL renormalises a
truncated kernel, we pad).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilo_pl.operators.base import LinearOperator, OperatorSpec

PADDINGS = ("reflect", "symmetric", "replicate", "circular")


def keys_cubic(t: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel at ``t`` (support ``|t| < 2``)."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def bicubic_taps(factor: int, a: float = -0.5) -> Tuple[int, List[float]]:
    """The 1-D downsampling filter: ``(t_min, weights)``.

    Output ``j`` reads inputs ``j * factor + t`` for ``t = t_min, t_min + 1, ...``
    with the returned weights (which sum to 1).
    """
    s = int(factor)
    offset = (s - 1) / 2.0  # output centre relative to j * s, in input pixels
    t_min = math.floor(offset - 2 * s) + 1
    t_max = math.ceil(offset + 2 * s) - 1
    w = [keys_cubic((t - offset) / s, a) / s for t in range(t_min, t_max + 1)]
    total = sum(w)
    return t_min, [v / total for v in w]


def pad_index(length: int, before: int, after: int, mode: str) -> Tensor:
    """Indices into ``range(length)`` of a signal padded by ``before``/``after`` samples.

    Modes: ``reflect`` (``d c b | a b c d``, edge not repeated), ``symmetric``
    (``c b a | a b c``, edge repeated, Matlab's), ``replicate`` (``a a | a b``),
    ``circular`` (wrap around). Pads longer than the signal fold repeatedly.
    """
    i = torch.arange(-before, length + after)
    if mode == "replicate":
        return i.clamp(0, length - 1)
    if mode == "circular":
        return i.remainder(length)
    if mode == "symmetric":
        i = i.remainder(2 * length)
        return torch.where(i >= length, 2 * length - 1 - i, i)
    if mode == "reflect":
        if length == 1:
            return torch.zeros_like(i)
        period = 2 * (length - 1)
        i = i.remainder(period)
        return torch.where(i >= length, period - i, i)
    raise ValueError(f"unknown padding {mode!r}; use one of {', '.join(PADDINGS)}")


class BicubicDownsample(LinearOperator):
    """``A(x)``: antialiased bicubic (Keys, ``a = -0.5``) downsampling by an integer factor.

    Args:
        factor: integer downsampling factor ``>= 1``; it must divide the image
            height and width. Factor 1 is exactly the identity.
        padding: border handling, one of ``reflect`` (default), ``symmetric``,
            ``replicate``, ``circular``. The adjoint is exact for all of them.
        noise_model: the measurement noise (``None``: noiseless), e.g.
            :class:`~ilo_pl.operators.noise.GaussianNoiseModel`.

    Raises:
        ValueError: for a factor < 1 or an unknown padding; at call time, if the
            factor does not divide the image size.
    """

    def __init__(self, factor: int, padding: str = "reflect", *, noise_model: Optional[nn.Module] = None) -> None:
        super().__init__(noise_model=noise_model)
        if isinstance(factor, bool) or int(factor) != factor or factor < 1:
            raise ValueError(f"the downsampling factor must be an integer >= 1; got {factor!r}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; use one of {', '.join(PADDINGS)}")
        self.factor = int(factor)
        self.padding = padding
        t_min, w = bicubic_taps(self.factor)
        self.t_min = t_min
        # Not persistent: derived from the factor, no need to checkpoint it.
        self.register_buffer("kernel", torch.tensor(w, dtype=torch.float32), persistent=False)

    # -- geometry ---------------------------------------------------------
    def _pads(self) -> Tuple[int, int]:
        k = self.kernel.numel()
        before = -self.t_min
        after = self.t_min + k - 1 - (self.factor - 1)
        return before, after

    def _index(self, length: int) -> Tensor:
        before, after = self._pads()
        return pad_index(length, before, after, self.padding).to(self.kernel.device)

    def _check_divides(self, h: int, w: int) -> None:
        s = self.factor
        if h % s or w % s:
            raise ValueError(
                f"the super-resolution factor {s} does not divide the image size {h}x{w}; "
                f"crop or resize the images to a multiple of {s}, or pick another factor"
            )

    # -- operator ---------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self.check_image(x)
        if self.factor == 1:
            return x  # exactly the identity: no blur, no rounding
        b, c, h, w = x.shape
        self._check_divides(h, w)
        s, k = self.factor, self.kernel.to(x.dtype)
        z = x.reshape(b * c, 1, h, w)
        z = F.conv2d(z.index_select(3, self._index(w)), k.view(1, 1, 1, -1), stride=(1, s))
        z = F.conv2d(z.index_select(2, self._index(h)), k.view(1, 1, -1, 1), stride=(s, 1))
        return z.reshape(b, c, h // s, w // s)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self.check_image(y)
        if self.factor == 1:
            return y
        b, c, h, w = y.shape
        s, k = self.factor, self.kernel.to(y.dtype)
        H, W = h * s, w * s  # noqa: N806
        z = y.reshape(b * c, 1, h, w)
        # Transposed strided conv = adjoint of the strided conv on the padded
        # signal; index_add = adjoint of the padding gather.
        z = F.conv_transpose2d(z, k.view(1, 1, -1, 1), stride=(s, 1))
        z = z.new_zeros(b * c, 1, H, w).index_add(2, self._index(H), z)
        z = F.conv_transpose2d(z, k.view(1, 1, 1, -1), stride=(1, s))
        z = z.new_zeros(b * c, 1, H, W).index_add(3, self._index(W), z)
        return z.reshape(b, c, H, W)

    def _row_sqnorms(self, length: int) -> Tensor:
        """The squared norms of the rows of the 1-D filter-and-subsample matrix for ``length`` inputs (float64).

        Output ``p`` reads padded positions ``p * s + t`` with weight ``k[t]``;
        the padding maps each to an input index, and weights landing on the
        same input add up (reflected borders).
        """
        s, k = self.factor, self.kernel.detach().to(device="cpu", dtype=torch.float64)
        out = length // s
        idx = self._index(length).cpu()
        cols = idx[torch.arange(out)[:, None] * s + torch.arange(k.numel())[None, :]]
        rows = torch.zeros(out, length, dtype=torch.float64).scatter_add_(1, cols, k.expand(out, -1).contiguous())
        return rows.pow(2).sum(1)

    def gram_diagonal(self, like: Tensor) -> Tensor:
        """``diag(A A^T)``: the filter is separable, so output ``(p, q)``'s row norm is the 1-D ones' product."""
        self.check_image(like)
        b, c, h, w = like.shape
        if self.factor == 1:
            return torch.ones_like(like)
        self._check_divides(h, w)
        diag = self._row_sqnorms(h)[:, None] * self._row_sqnorms(w)[None, :]
        return diag.to(dtype=like.dtype, device=like.device).expand(b, c, h // self.factor, w // self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, padding={self.padding!r}, taps={self.kernel.numel()}"


def upsample_bicubic(y: Tensor, factor: int, clip: bool = True) -> Tensor:
    """Classical bicubic upsampling baseline (torch's ``interpolate``, Keys ``a = -0.75``).

    Args:
        y: low-resolution images ``[B, C, h, w]`` in ``[-1, 1]``.
        factor: integer upsampling factor ``>= 1``.
        clip: clip the overshoot of the cubic kernel back to ``[-1, 1]``.

    Returns:
        ``[B, C, h * factor, w * factor]``.
    """
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise ValueError(f"the upsampling factor must be an integer >= 1; got {factor!r}")
    if not torch.is_tensor(y) or y.dim() != 4:
        got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"upsample_bicubic expects images [B, C, h, w]; got {got}")
    if factor == 1:
        return y
    out = F.interpolate(y, scale_factor=int(factor), mode="bicubic", align_corners=False)
    return out.clamp(-1.0, 1.0) if clip else out


class SuperResolution(OperatorSpec):
    """Spec of :class:`BicubicDownsample`.

    Config::

        operator:
          class_path: ilo_pl.operators.superres.SuperResolution
          init_args: {factor: 4}

    Args:
        factor: integer factor dividing the image height and width.
        padding: border handling of the filter (see :class:`BicubicDownsample`).
    """

    shared = True

    def __init__(self, factor: int, padding: str = "reflect") -> None:
        BicubicDownsample(factor, padding)  # validate at parse time
        self.factor = int(factor)
        self.padding = padding

    def build(
        self, image_shape: Tuple[int, int, int], seed: int, name: Optional[str] = None
    ) -> BicubicDownsample:
        _, h, w = image_shape
        op = BicubicDownsample(self.factor, self.padding)
        op._check_divides(h, w)
        return op
