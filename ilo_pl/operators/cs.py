"""Compressed sensing: ``m`` random linear measurements of the flattened image.

Two matrices, both scaled so that every column has unit expected squared norm
and ``E ||A x||^2 = ||x||^2`` for any fixed ``x``:

* :class:`PartialCirculant` -- ``A = (1 / sqrt(m)) P C D`` with ``D`` a
  diagonal of random signs (Rademacher), ``C`` the circulant matrix of an iid
  ``N(0, 1)`` vector ``g`` (``(C v)_i = sum_j g[(i - j) mod n] v_j``, applied by
  FFT) and ``P`` the selection of ``m`` fixed random rows. Memory is O(n): only
  the signs, the FFT of ``g`` and the ``m`` indices are stored; no ``m x n``
  matrix is ever built (except by :meth:`PartialCirculant.dense`, for tests).
* :class:`GaussianMatrix` -- a dense iid ``N(0, 1/m)`` matrix, for small images.

Why the scaling holds: row ``i`` of ``C D`` applied to ``x`` is
``sum_j g[i-j] s_j x_j``; the cross terms vanish in expectation because the
signs are independent, so ``E[(C D x)_i^2] = ||x||^2``; keeping ``m`` rows and
scaling by ``1/sqrt(m)`` gives ``E ||A x||^2 = ||x||^2``. Column ``j`` holds
``m`` entries ``g[i-j] s_j / sqrt(m)``, so ``E ||A e_j||^2 = 1``.

Measurements are ``[B, m]`` (not images): :meth:`superimpose` returns ``None``
and :meth:`measurement_error` is the mean squared error over the ``m``
measurements. Random parameters are drawn on the CPU from ``torch.Generator``
seeded with the operator's seed, then moved, so a seed gives the same matrix
on every device.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ilo_pl.operators.base import LinearOperator, Operator, OperatorSpec
from ilo_pl.policy import work_dtype

#: Largest ``n`` (= C*H*W) a dense :class:`GaussianMatrix` accepts by default.
GAUSSIAN_MAX_N = 2**16
#: Largest number of entries ``m * n`` of a dense :class:`GaussianMatrix` (1 GiB of float32).
GAUSSIAN_MAX_ENTRIES = 2**28


def _check_shape(image_shape: Sequence[int]) -> Tuple[int, int, int]:
    shape = tuple(int(v) for v in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes; got {tuple(image_shape)}")
    return shape  # type: ignore[return-value]


def _check_m(m: int, n: int) -> int:
    if isinstance(m, bool) or int(m) != m:
        raise ValueError(f"the number of measurements m must be an integer; got {m!r}")
    m = int(m)
    if m < 1 or m > n:
        raise ValueError(
            f"the number of measurements m={m} must be in [1, n] with n = C*H*W = {n}; "
            "pick m (or the ratio m/n) accordingly"
        )
    return m


# FFTs run in ilo-pl's shared work dtype: float64 for float64 inputs, else float32
# (half/bfloat16 inputs under mixed precision are computed in float32 and cast back).


class _FlatMeasurement(LinearOperator):
    """Shared plumbing: images ``[B, C, H, W]`` <-> flat vectors, shape checks."""

    image_shape: Tuple[int, int, int]
    m: int

    @property
    def n(self) -> int:
        """The signal dimension ``C * H * W``."""
        c, h, w = self.image_shape
        return c * h * w

    def _flatten(self, x: Tensor) -> Tensor:
        self.check_image(x)
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{type(self).__name__} was built for images of shape {self.image_shape} "
                f"but got {tuple(x.shape[1:])}; build the operator for the image size"
            )
        self._check_batch(x.shape[0])
        return x.reshape(x.shape[0], -1)

    def _check_measurements(self, y: Tensor) -> None:
        if not torch.is_tensor(y) or y.dim() != 2 or y.shape[1] != self.m:
            got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"{type(self).__name__} expects measurements [B, {self.m}]; got {got}")
        self._check_batch(y.shape[0])

    def _check_batch(self, b: int) -> None:
        # Per-problem matrices: the batch must match (a batch-1 operator is shared).
        ob = getattr(self, self.batched_buffers[0]).shape[0]
        if ob not in (1, b):
            raise ValueError(
                f"{type(self).__name__} holds {ob} per-problem matrices but the batch has {b} "
                "samples; stack one operator per sample (Operator.stack)"
            )

    def measurement_error(self, Ax: Tensor, y: Tensor) -> Tensor:  # noqa: N803
        """Mean squared error over the ``m`` measurements: ``[B]``."""
        return (Ax - y).pow(2).mean(1)

    def superimpose(self, x: Tensor, y: Tensor) -> Optional[Tensor]:
        return None  # measurements are not images: no perceptual comparison

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, m={self.m}, n={self.n}, " + super().extra_repr()


class PartialCirculant(_FlatMeasurement):
    """Randomly signed partial circulant matrix ``A = P C D / sqrt(m)`` (see module doc).

    Args:
        image_shape: ``(C, H, W)`` of the images; ``n = C * H * W``.
        m: number of measurements, ``1 <= m <= n``.
        seed: seed of the signs, the filter and the kept rows.
        noise_model: the measurement noise (``None``: noiseless), e.g.
            ``GaussianNoiseModel(sigma, clip=False)``.

    Buffers (leading batch dim 1; :meth:`Operator.stack` batches per-problem
    matrices): ``signs [1, n]`` (+-1), ``filter_fft [1, n//2 + 1, 2]`` (the
    filter's rFFT as real/imaginary pairs: a real buffer, so ``module.to(dtype)``
    and ``.half()`` cannot drop the imaginary part), ``rows [1, m]`` (sorted
    indices).

    Raises:
        ValueError: if ``m < 1`` or ``m > n``.

    Example:
        >>> import torch
        >>> op = PartialCirculant((3, 8, 8), m=19, seed=0)  # m/n = 19/192, about 10%
        >>> y = op.A(torch.rand(2, 3, 8, 8) * 2 - 1)
        >>> y.shape, op.A_adjoint(y).shape
        (torch.Size([2, 19]), torch.Size([2, 3, 8, 8]))
        >>> float(op.adjointness_test((3, 8, 8))) < 1e-12  # the adjoint is exact
        True
    """

    batched_buffers = ("signs", "filter_fft", "rows")

    def __init__(
        self, image_shape: Sequence[int], m: int, seed: int = 0, *, noise_model: Optional[nn.Module] = None
    ) -> None:
        super().__init__(noise_model=noise_model)
        self.image_shape = _check_shape(image_shape)
        n = self.n
        self.m = _check_m(m, n)
        self.seed = int(seed)
        g = torch.Generator().manual_seed(self.seed)
        signs = torch.randint(0, 2, (n,), generator=g).to(torch.float32).mul_(2).sub_(1)
        filt = torch.randn(n, generator=g, dtype=torch.float64)
        rows = torch.randperm(n, generator=g)[: self.m].sort().values
        self.register_buffer("signs", signs[None])
        spec = torch.view_as_real(torch.fft.rfft(filt)).to(torch.float32)
        self.register_buffer("filter_fft", spec[None])
        self.register_buffer("rows", rows[None])

    def _spectrum(self, dtype: torch.dtype) -> Tensor:
        return torch.view_as_complex(self.filter_fft.to(dtype).contiguous())

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        work = work_dtype(x.dtype)
        v = self._flatten(x).to(work) * self.signs.to(work)
        v = torch.fft.irfft(torch.fft.rfft(v) * self._spectrum(work), n=self.n)
        rows = self.rows.expand(v.shape[0], -1)
        return (v.gather(1, rows) / math.sqrt(self.m)).to(x.dtype)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_measurements(y)
        b, work = y.shape[0], work_dtype(y.dtype)
        rows = self.rows.expand(b, -1)
        v = y.new_zeros(b, self.n, dtype=work).scatter(1, rows, y.to(work) / math.sqrt(self.m))
        # Circular correlation (C^T) = multiplication by the conjugate spectrum.
        v = torch.fft.irfft(torch.fft.rfft(v) * self._spectrum(work).conj(), n=self.n)
        return (v * self.signs.to(work)).to(y.dtype).reshape(b, *self.image_shape)

    def filter(self) -> Tensor:
        """The circulant's first column ``g`` (``[B, n]``), recovered from its FFT."""
        return torch.fft.irfft(self._spectrum(torch.float64), n=self.n)

    def gram_diagonal(self, like: Tensor) -> Tensor:
        """``diag(A A^T)``: every row of ``C D`` holds ``g`` (shifted, signed), so each is ``||g||^2 / m``."""
        self._flatten(like)
        norms = self.filter().pow(2).sum(1, keepdim=True) / self.m  # [B or 1, 1]
        return norms.to(dtype=like.dtype, device=like.device).expand(like.shape[0], self.m)

    def dense(self, max_n: int = 4096) -> Tensor:
        """The explicit matrix ``[B, m, n]`` (float64), built from the definition; tests only.

        Raises:
            ValueError: if ``n > max_n`` (the matrix would be ``m x n``).
        """
        n = self.n
        if n > max_n:
            raise ValueError(f"dense() is for small operators only: n={n} > max_n={max_n}")
        g = self.filter()  # [B, n]
        i = torch.arange(n, device=g.device)
        circ = g[:, (i[:, None] - i[None, :]).remainder(n)]  # C[i, j] = g[(i - j) mod n]
        circ = circ * self.signs.to(g.dtype)[:, None, :]
        rows = self.rows[:, :, None].expand(-1, -1, n)
        return circ.gather(1, rows) / math.sqrt(self.m)


class GaussianMatrix(_FlatMeasurement):
    """Dense iid ``N(0, 1/m)`` measurement matrix ``[1, m, n]``, for small images.

    Args:
        image_shape: ``(C, H, W)``; ``n = C * H * W``.
        m: number of measurements, ``1 <= m <= n``.
        seed: seed of the matrix.
        max_n: the largest ``n`` accepted (default ``2**16``); use
            :class:`PartialCirculant` beyond it.
        noise_model: the measurement noise (``None``: noiseless).

    Raises:
        ValueError: if ``m < 1`` or ``m > n``, or if ``n`` (or ``m * n``) is too
            large for a dense matrix.
    """

    batched_buffers = ("matrix",)

    def __init__(
        self,
        image_shape: Sequence[int],
        m: int,
        seed: int = 0,
        max_n: int = GAUSSIAN_MAX_N,
        *,
        noise_model: Optional[nn.Module] = None,
    ) -> None:
        super().__init__(noise_model=noise_model)
        self.image_shape = _check_shape(image_shape)
        n = self.n
        self.m = _check_m(m, n)
        if n > max_n or self.m * n > GAUSSIAN_MAX_ENTRIES:
            raise ValueError(
                f"a dense Gaussian matrix for n={n} (image {self.image_shape}) and m={self.m} is too "
                f"large (limit n <= {max_n}, m*n <= {GAUSSIAN_MAX_ENTRIES}); use PartialCirculant "
                "(kind='circulant'), which stores O(n) numbers"
            )
        self.seed = int(seed)
        g = torch.Generator().manual_seed(self.seed)
        mat = torch.randn(self.m, n, generator=g) / math.sqrt(self.m)
        self.register_buffer("matrix", mat[None])

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        v = self._flatten(x)
        return torch.matmul(self.matrix.to(x.dtype), v[:, :, None])[:, :, 0]

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_measurements(y)
        v = torch.matmul(self.matrix.to(y.dtype).transpose(1, 2), y[:, :, None])[:, :, 0]
        return v.reshape(y.shape[0], *self.image_shape)

    def dense(self, max_n: Optional[int] = None) -> Tensor:
        """The matrix itself ``[B, m, n]`` (float64)."""
        return self.matrix.to(torch.float64)

    def gram_diagonal(self, like: Tensor) -> Tensor:
        """``diag(A A^T)``: the squared norms of the matrix's rows."""
        self._flatten(like)
        norms = self.matrix.to(like.dtype).pow(2).sum(2)  # [B or 1, m]
        return norms.to(like.device).expand(like.shape[0], self.m)


class CompressedSensing(OperatorSpec):
    """Spec of the compressed-sensing operators.

    Config::

        operator:
          class_path: ilo_pl.operators.cs.CompressedSensing
          init_args: {ratio: 0.1, kind: circulant, shared: true, seed: 0}

    Args:
        ratio: ``m / n`` in ``(0, 1]``; ``m = max(1, round(ratio * n))``.
        m: the number of measurements (give ``ratio`` or ``m``, not both).
        kind: ``"circulant"`` (:class:`PartialCirculant`, any size) or
            ``"gaussian"`` (:class:`GaussianMatrix`, small images).
        shared: one matrix for all problems (built with ``seed``); else one per
            problem, built with the problem's seed.
        seed: seed of the shared matrix.
    """

    KINDS = ("circulant", "gaussian")

    def __init__(
        self,
        ratio: Optional[float] = None,
        m: Optional[int] = None,
        kind: str = "circulant",
        shared: bool = True,
        seed: int = 0,
    ) -> None:
        if (ratio is None) == (m is None):
            raise ValueError("give exactly one of ratio (m/n) and m (number of measurements)")
        if ratio is not None and not 0 < float(ratio) <= 1:
            raise ValueError(f"the measurement ratio m/n must be in (0, 1]; got {ratio}")
        if m is not None and (int(m) != m or m < 1):
            raise ValueError(f"the number of measurements m must be an integer >= 1; got {m!r}")
        if kind not in self.KINDS:
            raise ValueError(f"unknown compressed-sensing kind {kind!r}; use one of {', '.join(self.KINDS)}")
        self.ratio = None if ratio is None else float(ratio)
        self.m = None if m is None else int(m)
        self.kind = kind
        self.shared = bool(shared)
        self.seed = int(seed)

    def num_measurements(self, image_shape: Tuple[int, int, int]) -> int:
        """``m`` for images of ``image_shape``."""
        n = math.prod(int(v) for v in image_shape)
        return self.m if self.m is not None else max(1, int(round(self.ratio * n)))

    def build(self, image_shape: Tuple[int, int, int], seed: int, name: Optional[str] = None) -> Operator:
        m = self.num_measurements(image_shape)
        seed = self.seed if self.shared else int(seed)
        cls = PartialCirculant if self.kind == "circulant" else GaussianMatrix
        return cls(image_shape, m, seed)
