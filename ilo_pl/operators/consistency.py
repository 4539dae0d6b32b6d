"""Measurement consistency: a final step that moves the generator's image ``G`` towards the observation.

Two steps, for linear operators with an adjoint (:class:`~ilo_pl.operators.base.LinearOperator`);
``r = y - A G`` is the measurement residual and both are ``x = G + d`` with

    d = A^T (A A^T + lambda I)^+ r
      = argmin_d ||A d - r||^2 + lambda ||d||^2   (of least norm when lambda = 0)

* ``project`` (``lambda = 0``): ``x = G + A^+ (y - A G)``, the image nearest
  ``G`` that explains the observation exactly (``A x = y``; for an ``y``
  outside the range of ``A`` the least-squares fit of least distance to
  ``G``). ``A^+ A`` projects onto the row space of ``A``, so ``x`` keeps ``G``'s
  null-space part and takes the row-space part from ``y``: for inpainting
  this is pasting the observed pixels into ``G``.
* ``prox`` (``lambda = sigma^2 / tau^2``): the proximal (MAP) step

      x = argmin_x ||x - G||^2 / (2 tau^2) + ||A x - y||^2 / (2 sigma^2)
        = G + A^T (A A^T + (sigma^2 / tau^2) I)^{-1} (y - A G)

  i.e. the posterior mean for measurements ``y = A x + n``, ``n ~ N(0,
  sigma^2 I)`` (``sigma``: the operator's noise model's ``std``, known) and a
  Gaussian prior ``x ~ N(G, tau^2 I)`` around the generator's image. ``tau``
  (how far the truth is from ``G`` per pixel) is fitted per problem by the
  method of moments (:func:`prior_variance`): under that model
  ``E ||r||^2 = tau^2 tr(A A^T) + N sigma^2`` (``N`` entries of ``y``), so
  ``tau^2 = max(||r||^2 - N sigma^2, 0) / tr(A A^T)``: an empirical Wiener
  step. A residual no larger than the noise alone gives ``tau = 0`` and
  ``x = G``; ``sigma = 0`` (noiseless) gives ``project``. (With ``tau = 1``,
  the textbook ``||x - G||^2 / 2``, the step would all but return ``y`` for
  denoising: ``G``'s error is far below 1 per pixel on ``[-1, 1]`` images.)
  Clipped noise (``GaussianNoiseModel(clip=True)``) has less variance than
  ``sigma^2`` near ``+-1``: ``tau`` comes out lower and the step smaller.

How ``d`` is computed: an operator's closed form when it has one
(:meth:`~ilo_pl.operators.base.LinearOperator.least_norm_solve`: masks and the
identity), else conjugate gradients on ``(A A^T + lambda I) w = r`` in
measurement space, batched with per-sample step sizes and a per-sample
tolerance (:func:`conjugate_gradient`), then ``d = A^T w``. Both run in
float64 (float32 where the device has no float64). For ``project`` CG needs
``r`` in the range of ``A A^T``, which holds for every noiseless problem
(``r = A (x_true - G)``) and for any ``y`` when ``A`` has full row rank
(super-resolution, compressed sensing).

The result is not in the generator's range: a saved solution stores the
correction (``image = render(state) + correction``, see :mod:`ilo_pl.solutions`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ilo_pl.operators.base import LinearOperator, Operator

#: The consistency steps (``none``: the generator's image as it is).
MODES = ("none", "project", "prox")

#: Default relative tolerance of the solve, per work dtype.
DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

#: Default most CG iterations (each one ``A`` and one ``A^T``).
DEFAULT_MAX_ITER = 1000

#: Rademacher probes of the trace estimate ``tr(A A^T)`` (:func:`gram_trace`).
TRACE_PROBES = 16


def check_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`MODES`, else a ``ValueError`` naming them."""
    if mode not in MODES:
        raise ValueError(
            f"consistency must be one of {', '.join(repr(m) for m in MODES)} (none: the generator's image; "
            f"project: explain y exactly; prox: a proximal step with the known noise level); got {mode!r}"
        )
    return str(mode)


def has_adjoint(op: Operator) -> bool:
    """Whether ``op`` is linear and defines ``A_adjoint``."""
    return isinstance(op, LinearOperator) and type(op).A_adjoint is not LinearOperator.A_adjoint


def noise_std(op: Operator) -> float:
    """The standard deviation of ``op``'s measurement noise on the measurements' scale (0: noiseless).

    Raises:
        ValueError: if the noise model does not state its level (no numeric ``std``).
    """
    model = op.noise_model
    if model is None:
        return 0.0
    std = getattr(model, "std", None)
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
        raise ValueError(
            f"consistency 'prox' needs the noise level, but {type(op).__name__}'s noise model "
            f"{type(model).__name__} has no numeric `std` (the noise's standard deviation); use a "
            "GaussianNoiseModel, give your noise model a `std` property, or use consistency 'project'"
        )
    return float(std)


def check_operator(op: Operator, mode: str) -> None:
    """Refuse a consistency step ``op`` cannot take, naming the operator and the fix.

    Raises:
        ValueError: for ``project``/``prox`` on an operator without an adjoint
            (classifier guidance, a ``LambdaOperator``, a ``Compose`` with a
            non-linear part), or ``prox`` with a noise model of unknown level.
    """
    mode = check_mode(mode)
    if mode == "none":
        return
    if not has_adjoint(op):
        raise ValueError(
            f"consistency {mode!r} needs a linear operator with an adjoint (A_adjoint), and "
            f"{type(op).__name__} has none (classifier guidance, a LambdaOperator or a Compose with a "
            "non-linear part): set consistency to 'none' for this task, or give the operator an exact "
            "A_adjoint (subclass ilo_pl.operators.LinearOperator)"
        )
    if mode == "prox":
        noise_std(op)


def _rows(t: Tensor) -> Tensor:
    """Per-sample sum of squares, ``[B]``."""
    return t.flatten(1).pow(2).sum(1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product, ``[B]``."""
    return (a * b).flatten(1).sum(1)


def _col(v: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> broadcastable against ``like`` ``[B, ...]``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class CGResult:
    """What :func:`conjugate_gradient` returns.

    Attributes:
        solution: ``w`` ``[B, ...]``.
        residual: per sample ``||rhs - (M + damping) w|| / ||rhs||`` (the recursive residual; 0 for ``rhs = 0``).
        iterations: per sample, the iterations it took (``max_iter`` if it did not converge).
        converged: per sample, whether ``residual <= tol``.
    """

    solution: Tensor
    residual: Tensor
    iterations: Tensor
    converged: Tensor


@torch.no_grad()
def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    rhs: Tensor,
    damping: Union[float, Tensor] = 0.0,
    tol: float = 1e-10,
    max_iter: int = DEFAULT_MAX_ITER,
) -> CGResult:
    """Solve ``(M + damping I) w = rhs`` for each sample, ``M`` symmetric positive semi-definite.

    Batched: every sample has its own step sizes, and stops (its ``w`` no
    longer changes) when its relative residual is at most ``tol``, so a
    sample's solution does not depend on its batch-mates. A sample whose
    search direction has no positive curvature (``rhs`` outside the range of a
    singular ``M``) stops there, unconverged. One host read per iteration (the
    "all converged" test).

    Args:
        apply: ``v -> M v`` on ``[B, ...]`` (batched, per sample).
        rhs: ``[B, ...]``.
        damping: ``lambda >= 0``, a number or one per sample ``[B]``.
        tol: relative residual to stop at.
        max_iter: the most iterations.

    Raises:
        ValueError: for ``max_iter < 1``, a negative ``tol`` or negative damping.
    """
    if int(max_iter) < 1 or not tol >= 0:
        raise ValueError(f"conjugate_gradient needs max_iter >= 1 and tol >= 0; got max_iter={max_iter}, tol={tol}")
    lam = torch.as_tensor(damping, dtype=rhs.dtype, device=rhs.device).expand(rhs.shape[0])
    if bool((lam < 0).any()):
        raise ValueError("the damping lambda must be >= 0")
    w = torch.zeros_like(rhs)
    res = rhs.clone()
    p = res.clone()
    rs = _rows(res)
    bound = tol * _rows(rhs).sqrt()
    done = rs.sqrt() <= bound
    iters = torch.zeros(rhs.shape[0], dtype=torch.long, device=rhs.device)
    for _ in range(int(max_iter)):
        if bool(done.all()):
            break
        q = apply(p) + _col(lam, p) * p
        curvature = _dot(p, q)
        stalled = ~done & ~(curvature > 0)  # (also catches NaN)
        active = ~done & ~stalled
        alpha = torch.where(active, rs / torch.where(active, curvature, 1.0), 0.0)
        w = w + _col(alpha, w) * p
        res = res - _col(alpha, res) * q
        new_rs = _rows(res)
        beta = torch.where(active, new_rs / torch.where(active, rs, 1.0), 0.0)
        p = torch.where(_col(active, p), res + _col(beta, p) * p, p)
        rs = torch.where(active, new_rs, rs)
        iters = iters + active.long()
        done = done | stalled | (rs.sqrt() <= bound)
    rel = rs.sqrt() / _rows(rhs).sqrt().clamp_min(torch.finfo(rhs.dtype).tiny)
    return CGResult(solution=w, residual=rel, iterations=iters, converged=rs.sqrt() <= bound)


def _damping_rows(damping: Union[float, Tensor], like: Tensor) -> Tensor:
    return _col(torch.as_tensor(damping, dtype=like.dtype, device=like.device).expand(like.shape[0]), like)


@torch.no_grad()
def least_norm_correction(
    op: LinearOperator,
    r: Tensor,
    damping: Union[float, Tensor] = 0.0,
    tol: Optional[float] = None,
    max_iter: int = DEFAULT_MAX_ITER,
) -> Tensor:
    """``d = A^T (A A^T + damping I)^+ r``: the least-norm minimiser of ``||A d - r||^2 + damping ||d||^2``.

    The operator's closed form (:meth:`~ilo_pl.operators.base.LinearOperator.least_norm_solve`)
    when it has one, else :func:`conjugate_gradient` on ``A A^T + damping I``
    in measurement space, then ``A^T``. A sample that does not reach ``tol``
    is warned about (its ``d`` is CG's last iterate).

    Args:
        op: the (batched) linear operator.
        r: measurement residuals ``[B, ...]`` (the shape of ``A(x)``).
        damping: ``lambda >= 0``, a number or one per sample ``[B]``.
        tol: CG's relative residual (default by dtype, :data:`DEFAULT_TOL`).
        max_iter: CG's most iterations.

    Returns:
        ``d`` ``[B, C, H, W]`` in ``r``'s dtype.
    """
    closed = op.least_norm_solve(r, damping)
    if closed is not None:
        return closed
    tol = DEFAULT_TOL.get(r.dtype, 1e-5) if tol is None else float(tol)
    cg = conjugate_gradient(lambda v: op.A(op.A_adjoint(v)), r, damping, tol=tol, max_iter=max_iter)
    if not bool(cg.converged.all()):
        bad = (~cg.converged).nonzero().flatten().tolist()
        warnings.warn(
            f"the consistency solve of sample(s) {bad[:10]} stopped at relative residual "
            f"{float(cg.residual.max()):.3g} > tol {tol:g} after {int(cg.iterations.max())} conjugate-gradient "
            "iterations; their correction is approximate (raise max_iter, or use 'prox' for noisy problems)",
            stacklevel=3,
        )
    return op.A_adjoint(cg.solution)


@torch.no_grad()
def gram_trace(op: LinearOperator, like: Tensor, probes: int = TRACE_PROBES) -> Tensor:
    """``tr(A A^T) = tr(A^T A)`` per sample, by Hutchinson's estimate ``mean_k ||A z_k||^2``.

    ``z_k`` are Rademacher (+-1) images drawn from a fixed seed, the same for
    every sample (so the estimate does not depend on batch-mates). Exact for
    diagonal ``A^T A`` (masks, the identity).

    Args:
        op: the (batched) linear operator.
        like: images ``[B, C, H, W]`` (shape, dtype and device of the probes).
        probes: the number of probe images.
    """
    g = torch.Generator().manual_seed(0)
    total = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    for _ in range(int(probes)):
        z = torch.randint(0, 2, tuple(like.shape[1:]), generator=g).to(like.dtype).mul_(2).sub_(1)
        total += _rows(op.A(z.to(like.device).expand_as(like)))
    return total / int(probes)


@torch.no_grad()
def prior_variance(op: LinearOperator, r: Tensor, sigma: float, like: Tensor) -> Tensor:
    """``tau^2`` per sample: ``max(||r||^2 - N sigma^2, 0) / tr(A A^T)`` (method of moments, see the module doc).

    Args:
        op: the (batched) linear operator.
        r: the measurement residuals ``y - A G`` ``[B, ...]``.
        sigma: the noise's standard deviation on the measurements' scale.
        like: the images ``G`` ``[B, C, H, W]``.
    """
    n = r[0].numel()
    excess = (_rows(r) - n * float(sigma) ** 2).clamp_min(0.0)
    return excess / gram_trace(op, like).clamp_min(torch.finfo(r.dtype).tiny)


@dataclass
class ConsistencyStep:
    """What :func:`consistency_step` returns.

    Attributes:
        image: the corrected images ``G + correction`` (``G``'s dtype and device).
        correction: ``d`` ``[B, C, H, W]`` in ``G``'s dtype (zero for ``none`` and non-finite samples).
        damping: ``lambda`` per sample (``0`` for ``project``; ``inf`` where ``prox`` left ``G`` as it is).
        residual: per sample, the relative residual of the normal equations
            ``||A^T (A d - r) + lambda d|| / ||A^T r||`` in the work dtype (0 where ``r = 0``).
    """

    image: Tensor
    correction: Tensor
    damping: Tensor
    residual: Tensor


def work_dtype_for(device: torch.device) -> torch.dtype:
    """float64, except on devices without it (Apple MPS: float32)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


@torch.no_grad()
def consistency_step(
    op: Operator,
    image: Tensor,
    y: Tensor,
    mode: str,
    *,
    sigma: Optional[float] = None,
    tau: Optional[Union[float, Tensor]] = None,
    tol: Optional[float] = None,
    max_iter: int = DEFAULT_MAX_ITER,
) -> ConsistencyStep:
    """Apply the ``project`` or ``prox`` step to the generator's images (see the module doc for the formulas).

    Args:
        op: the batched operator (linear, with ``A_adjoint``).
        image: ``G`` ``[B, C, H, W]``.
        y: the observations ``[B, ...]``.
        mode: ``"none"``, ``"project"`` or ``"prox"``.
        sigma: the noise's std for ``prox`` (default: the operator's noise model's ``std``).
        tau: the prior's std for ``prox``, a number or one per sample (default: fitted, :func:`prior_variance`).
        tol: the solve's relative tolerance (default by dtype, :data:`DEFAULT_TOL`).
        max_iter: the most CG iterations.

    Raises:
        ValueError: for an unknown mode, or an operator that cannot take the step (:func:`check_operator`).
    """
    check_operator(op, mode)
    b = image.shape[0]
    if mode == "none":
        zero = torch.zeros_like(image)
        return ConsistencyStep(image, zero, torch.zeros(b, device=image.device), torch.zeros(b, device=image.device))
    work = work_dtype_for(image.device)
    g = image.detach().to(work)
    r = y.detach().to(device=image.device, dtype=work) - op.A(g)
    # A sample without a finite image or residual keeps G (its correction is zero).
    ok = torch.isfinite(r.flatten(1)).all(1) & torch.isfinite(g.flatten(1)).all(1)
    r = torch.where(_col(ok, r), r, 0.0)
    lam = torch.zeros(b, dtype=work, device=image.device)
    if mode == "prox":
        s = noise_std(op) if sigma is None else float(sigma)
        if s > 0:
            t2 = prior_variance(op, r, s, g) if tau is None else torch.as_tensor(tau, dtype=work, device=g.device).expand(b) ** 2
            keep_g = t2 <= 0  # the residual is within the noise: no correction
            lam = torch.where(keep_g, math.inf, s**2 / torch.where(keep_g, 1.0, t2))
            r = torch.where(_col(keep_g, r), 0.0, r)
    d = least_norm_correction(op, r, torch.where(torch.isfinite(lam), lam, 1.0), tol=tol, max_iter=max_iter)
    d = torch.where(_col(ok, d), d, 0.0)
    # The check every step gets: the normal equations of min ||A d - r||^2 + lambda ||d||^2.
    lam_f = _col(torch.where(torch.isfinite(lam), lam, 0.0), d)
    normal = op.A_adjoint(op.A(d) - r) + lam_f * d
    scale = _rows(op.A_adjoint(r)).sqrt()
    residual = torch.where(scale > 0, _rows(normal).sqrt() / scale.clamp_min(torch.finfo(work).tiny), 0.0)
    correction = d.to(image.dtype)
    return ConsistencyStep(image + correction, correction, lam, residual)
