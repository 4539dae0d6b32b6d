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
  step (``tr(A A^T)`` exact, :func:`gram_trace`). A residual no larger than
  the noise alone gives ``tau = 0`` and ``x = G`` (warned about, naming the
  problems); ``sigma = 0`` (noiseless) gives ``project``. (With ``tau = 1``,
  the textbook ``||x - G||^2 / 2``, the step would all but return ``y`` for
  denoising: ``G``'s error is far below 1 per pixel on ``[-1, 1]`` images.)

  Clipped noise (``GaussianNoiseModel(clip=True)``, :func:`noise_clips`):
  ``y = clip(A x + n, -1, 1)`` has far less spread than ``sigma^2`` at
  heavy noise (second moment about 0.4 against ``sigma^2 = 0.615`` at sigma
  100), so the formula above would read most of the residual as noise
  (``tau = 0``, ``x = G``). The fit then solves the same moment equation with
  the clipped Gaussian's second moment per entry (:func:`clipped_moments`,
  at ``mu = A G`` and std ``sqrt(tau^2 diag(A A^T)_i + sigma^2)``), and
  ``lambda = v / tau^2`` with ``v`` the clipped noise's variance at ``A G``
  averaged over the measurements (:func:`noise_variance`).

How ``d`` is computed: an operator's closed form when it has one
(:meth:`~ilo_pl.operators.base.LinearOperator.least_norm_solve`: masks and the
identity), else conjugate gradients on ``(A A^T + lambda I) w = r`` in
measurement space, batched with per-sample step sizes and a per-sample
tolerance (:func:`conjugate_gradient`), then ``d = A^T w``. Both run in
float64 (float32 where the device has no float64). For ``project`` CG needs
``r`` in the range of ``A A^T``, which holds for every noiseless problem
(``r = A (x_true - G)``) and for any ``y`` when ``A`` has full row rank
(super-resolution, compressed sensing).

:func:`consistency_step` returns ``G + d`` as it is;
:func:`ilo_pl.modules.finish.apply_consistency` (the module's step) clamps it to
``[-1, 1]``, the image the PNG shows, the metrics score and ``measurement_loss``
measures. The result is not in the generator's range: a saved solution stores
the correction (``image = clamp(render(state) + correction, -1, 1)``, see
:mod:`ilo_pl.solutions`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ilo_pl.operators.base import LinearOperator, Operator
from ilo_pl.operators.compose import Compose

#: The consistency steps (``none``: the generator's image as it is).
MODES = ("none", "project", "prox")

#: Default relative tolerance of the solve, per work dtype.
DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

#: Default most CG iterations (each one ``A`` and one ``A^T``).
DEFAULT_MAX_ITER = 1000

#: Rademacher probes of the estimate of ``diag(A A^T)`` and ``tr(A A^T)`` (:func:`gram_diagonal`), for
#: operators without a closed form (:meth:`~ilo_pl.operators.base.LinearOperator.gram_diagonal`).
TRACE_PROBES = 16

#: The consistency step's residual (normal equations, relative) above which a problem is warned about.
RESIDUAL_WARNING = 1e-4

#: The largest fitted prior variance ``tau^2`` (a residual that clipped noise cannot explain at any ``tau``).
TAU2_MAX = 1e6


def check_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`MODES`, else a ``ValueError`` naming them."""
    if mode not in MODES:
        raise ValueError(
            f"consistency must be one of {', '.join(repr(m) for m in MODES)} (none: the generator's image; "
            f"project: explain y exactly; prox: a proximal step with the known noise level); got {mode!r}"
        )
    return str(mode)


def _without_adjoint(op: Operator) -> Optional[Operator]:
    """``op`` or the first part of it (looking inside compositions, at any depth) without an adjoint; ``None``: all have one."""
    if isinstance(op, Compose):  # a LinearCompose's A_adjoint calls each part's
        for part in op.ops:
            missing = _without_adjoint(part)
            if missing is not None:
                return missing
        return None if isinstance(op, LinearOperator) else op
    if not isinstance(op, LinearOperator) or type(op).A_adjoint is LinearOperator.A_adjoint:
        return op
    return None


def has_adjoint(op: Operator) -> bool:
    """Whether ``op`` is linear and defines ``A_adjoint`` (for a composition: every part, at any depth)."""
    return _without_adjoint(op) is None


def noise_clips(op: Operator) -> bool:
    """Whether ``op``'s noise model clips the noisy measurement to ``[-1, 1]`` (``GaussianNoiseModel(clip=True)``)."""
    return getattr(op.noise_model, "clip", False) is True


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
    missing = _without_adjoint(op)
    if missing is not None:
        where = type(op).__name__ if missing is op else f"{type(op).__name__}'s part {type(missing).__name__}"
        raise ValueError(
            f"consistency {mode!r} needs a linear operator with an adjoint (A_adjoint), and "
            f"{where} has none (classifier guidance, a LambdaOperator, a Compose with a non-linear part "
            "or a part without A_adjoint): set consistency to 'none' for this task, or give the operator "
            "an exact A_adjoint (subclass ilo_pl.operators.LinearOperator)"
        )
    if mode == "prox":
        noise_std(op)


def project_noise_warning(op: Operator, mode: str) -> Optional[str]:
    """The warning for ``project`` on a noisy operator (``None`` for other modes and noiseless operators).

    ``project`` makes the result explain the noisy observation exactly: for
    denoising it returns ``y`` itself, for noisy inpainting it pastes the noisy
    pixels. A noise model without a numeric ``std`` counts as noisy.
    """
    if mode != "project" or op.noise_model is None:
        return None
    std = getattr(op.noise_model, "std", None)
    if isinstance(std, (int, float)) and not isinstance(std, bool) and std == 0:
        return None
    level = f"std {float(std):.3g} on [-1, 1]" if isinstance(std, (int, float)) and not isinstance(std, bool) else "unknown level"
    return (
        f"consistency 'project' on {type(op).__name__}, whose measurements are noisy ({type(op.noise_model).__name__}, "
        f"{level}): the result explains the noisy observation exactly (denoising: y itself; noisy inpainting: "
        "the noisy pixels pasted in); use consistency 'prox', which weighs the observation by the known noise level"
    )


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


def _least_norm(
    op: LinearOperator, r: Tensor, damping: Union[float, Tensor], tol: Optional[float], max_iter: int
) -> "tuple[Tensor, Optional[CGResult], float]":
    """``(d, CG's result or None for a closed form, the tolerance)``: see :func:`least_norm_correction`."""
    closed = op.least_norm_solve(r, damping)
    tol = DEFAULT_TOL.get(r.dtype, 1e-5) if tol is None else float(tol)
    if closed is not None:
        return closed, None, tol
    cg = conjugate_gradient(lambda v: op.A(op.A_adjoint(v)), r, damping, tol=tol, max_iter=max_iter)
    return op.A_adjoint(cg.solution), cg, tol


def _names(ids: Optional[Sequence[str]], samples: Sequence[int]) -> str:
    """Problems ``samples`` by id (``sample(s) i, j`` without ids), at most ten."""
    shown = [str(ids[i]) if ids is not None else str(i) for i in samples[:10]]
    more = f" and {len(samples) - 10} more" if len(samples) > 10 else ""
    return ("" if ids is not None else "sample(s) ") + ", ".join(shown) + more


@torch.no_grad()
def least_norm_correction(
    op: LinearOperator,
    r: Tensor,
    damping: Union[float, Tensor] = 0.0,
    tol: Optional[float] = None,
    max_iter: int = DEFAULT_MAX_ITER,
    warn: bool = True,
) -> Tensor:
    """``d = A^T (A A^T + damping I)^+ r``: the least-norm minimiser of ``||A d - r||^2 + damping ||d||^2``.

    The operator's closed form (:meth:`~ilo_pl.operators.base.LinearOperator.least_norm_solve`)
    when it has one, else :func:`conjugate_gradient` on ``A A^T + damping I``
    in measurement space, then ``A^T``. A sample that does not reach ``tol``
    is warned about (its ``d`` is CG's last iterate) unless ``warn`` is false.
    (:func:`consistency_step` warns itself, once, naming the problems.)

    Args:
        op: the (batched) linear operator.
        r: measurement residuals ``[B, ...]`` (the shape of ``A(x)``).
        damping: ``lambda >= 0``, a number or one per sample ``[B]``.
        tol: CG's relative residual (default by dtype, :data:`DEFAULT_TOL`).
        max_iter: CG's most iterations.
        warn: warn about samples short of ``tol``.

    Returns:
        ``d`` ``[B, C, H, W]`` in ``r``'s dtype.
    """
    d, cg, tol = _least_norm(op, r, damping, tol, max_iter)
    if warn and cg is not None and not bool(cg.converged.all()):
        bad = (~cg.converged).nonzero().flatten().tolist()
        warnings.warn(
            f"the consistency solve of {_names(None, bad)} stopped at relative residual "
            f"{float(cg.residual.max()):.3g} > tol {tol:g} after {int(cg.iterations.max())} conjugate-gradient "
            "iterations; their correction is approximate (raise max_iter, or use 'prox' for noisy problems)",
            stacklevel=3,
        )
    return d


@torch.no_grad()
def gram_diagonal(op: LinearOperator, like: Tensor, probes: int = TRACE_PROBES) -> Tensor:
    """``diag(A A^T)`` per sample, shaped like ``A(like)``: the squared norms of ``A``'s rows.

    The operator's closed form (:meth:`~ilo_pl.operators.base.LinearOperator.gram_diagonal`:
    masks, the identity, bicubic downsampling, both compressed-sensing
    matrices, a composition of one of them with identities) when it has one,
    else the estimate ``mean_k (A z_k)^2`` (Bekas et al.; Hutchinson's, entry
    by entry) over ``probes`` Rademacher (+-1) images ``z_k`` drawn from a fixed
    seed, the same for every sample (so the estimate does not depend on
    batch-mates). The estimate is exact for diagonal ``A^T A``.

    Args:
        op: the (batched) linear operator.
        like: images ``[B, C, H, W]`` (shape, dtype and device).
        probes: the number of probe images of the estimate.
    """
    exact = op.gram_diagonal(like)
    if exact is not None:
        return exact.to(dtype=like.dtype, device=like.device)
    g = torch.Generator().manual_seed(0)
    total: Optional[Tensor] = None
    for _ in range(int(probes)):
        z = torch.randint(0, 2, tuple(like.shape[1:]), generator=g).to(like.dtype).mul_(2).sub_(1)
        sq = op.A(z.to(like.device).expand_as(like)).pow(2)
        total = sq if total is None else total + sq
    return total / int(probes)


@torch.no_grad()
def gram_trace(op: LinearOperator, like: Tensor, probes: int = TRACE_PROBES) -> Tensor:
    """``tr(A A^T) = tr(A^T A)`` per sample ``[B]``: the sum of :func:`gram_diagonal`.

    Exact for ilo-pl's operators (their closed forms); Hutchinson's estimate
    ``mean_k ||A z_k||^2`` with ``probes`` fixed Rademacher images otherwise.
    """
    return gram_diagonal(op, like, probes).flatten(1).sum(1)


def _std_normal_pdf(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _clipped_parts(mu: Tensor, s: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
    """``(E w^2, E w, dE w^2 / d(s^2))`` for ``w = clip(mu + e, -1, 1) - mu``, ``e ~ N(0, s^2)``, entrywise."""
    tiny = torch.finfo(mu.dtype).tiny
    s = s.clamp_min(tiny)
    lo, hi = -1.0 - mu, 1.0 - mu
    # (Clamped: beyond 40 standard deviations the normal's tails are 0 in float64; keeps t * pdf(t) finite.)
    a, b = (lo / s).clamp(-40.0, 40.0), (hi / s).clamp(-40.0, 40.0)
    below, above = torch.special.ndtr(a), torch.special.ndtr(-b)  # P(e < lo), P(e > hi)
    fa, fb = _std_normal_pdf(a), _std_normal_pdf(b)
    # d/d(s^2) E w^2 = E[f''(e)] / 2 for f = clip(e, lo, hi)^2 (the heat equation):
    # P(lo < e < hi) + lo p(lo) - hi p(hi), p the density of e.
    slope = (1.0 - below - above) + a * fa - b * fb
    m2 = s * s * slope + lo * lo * below + hi * hi * above
    m1 = s * (fa - fb) + lo * below + hi * above
    return m2, m1, slope


def clipped_moments(mu: Tensor, s: Union[float, Tensor]) -> "tuple[Tensor, Tensor, Tensor]":
    """Moments of Gaussian noise clipped to ``[-1, 1]``, entrywise: ``(E w^2, E w, Var clip(mu + e))``.

    ``w = clip(mu + e, -1, 1) - mu`` with ``e ~ N(0, s^2)``: the error that
    ``GaussianNoiseModel(clip=True)`` adds to a noiseless measurement ``mu``.
    With ``a = (-1 - mu) / s``, ``b = (1 - mu) / s`` and ``phi``/``Phi`` the
    standard normal pdf/cdf::

        E w^2 = s^2 (Phi(b) - Phi(a) + a phi(a) - b phi(b)) + (1 + mu)^2 Phi(a) + (1 - mu)^2 Phi(-b)
        E w   = s (phi(a) - phi(b)) - (1 + mu) Phi(a) + (1 - mu) Phi(-b)

    and ``Var clip(mu + e) = E w^2 - (E w)^2``. Far inside ``[-1, 1]`` these
    are ``s^2``, 0 and ``s^2``; clipping lowers them (at ``mu = 0``, ``s =
    0.784``, sigma 100: ``E w^2 = 0.42`` against ``s^2 = 0.615``).

    Args:
        mu: the noiseless values (any shape).
        s: the noise's std, a number or a tensor broadcastable against ``mu``.
    """
    s = torch.as_tensor(s, dtype=mu.dtype, device=mu.device)
    m2, m1, _ = _clipped_parts(mu, s.expand_as(mu) if s.dim() else s * torch.ones_like(mu))
    return m2, m1, (m2 - m1 * m1).clamp_min(0.0)


@torch.no_grad()
def _clipped_prior_variance(a: Tensor, mu: Tensor, r: Tensor, sigma: float) -> Tensor:
    """``tau^2`` per sample solving ``sum_i E w_i^2(tau^2 a_i + sigma^2) = ||r||^2`` (see :func:`prior_variance`).

    ``a = diag(A A^T)`` and ``mu = A G``, both ``[B, N]``.
    """
    b = r.shape[0]
    target = _rows(r)
    s2 = float(sigma) ** 2

    def moment(t: Tensor) -> "tuple[Tensor, Tensor]":
        m2, _, slope = _clipped_parts(mu, (t[:, None] * a + s2).sqrt())
        return m2.sum(1), (a * slope).sum(1)  # the sum and its derivative in t

    zero = torch.zeros(b, dtype=r.dtype, device=r.device)
    f0, df0 = moment(zero)
    active = f0 < target  # else the residual is within the (clipped) noise: tau = 0
    if not bool(active.any()):
        return zero
    # An upper bracket: from the Newton step at 0 (a lower bound: the moment is concave in t), doubled.
    tr = a.sum(1).clamp_min(torch.finfo(r.dtype).tiny)
    step0 = torch.where(active, (target - f0) / torch.where(df0 > 0, df0, tr), 0.0)
    lo = zero.clone()
    hi = torch.where(active, step0.clamp_min(1e-12) * 2, 0.0)
    for _ in range(80):
        f_hi, _ = moment(hi)
        short = active & (f_hi < target) & (hi < TAU2_MAX)
        if not bool(short.any()):
            break
        lo = torch.where(short, hi, lo)
        hi = torch.where(short, (hi * 4).clamp_max(TAU2_MAX), hi)
    f_hi, _ = moment(hi)
    saturated = active & (f_hi < target)  # not even tau^2 = TAU2_MAX explains the residual
    solve = active & ~saturated
    # Safeguarded Newton (bisection where Newton leaves the bracket), per sample.
    t = torch.where(solve, torch.maximum(step0, lo).minimum(hi), 0.0)
    for _ in range(100):
        f, df = moment(t)
        below = f < target
        lo = torch.where(solve & below, t, lo)
        hi = torch.where(solve & ~below, t, hi)
        newton = t - (f - target) / torch.where(df > 0, df, 1.0)
        bad = ~(df > 0) | ~(newton > lo) | ~(newton < hi)
        new = torch.where(solve, torch.where(bad, (lo + hi) / 2, newton), t)
        done = ~solve | ((new - t).abs() <= 1e-12 * new.abs()) | ((hi - lo) <= 1e-12 * hi)
        t = new
        if bool(done.all()):
            break
    return torch.where(saturated, torch.full_like(t, TAU2_MAX), t)


@torch.no_grad()
def prior_variance(op: LinearOperator, r: Tensor, sigma: float, like: Tensor, clip: bool = False) -> Tensor:
    """``tau^2`` per sample, by the method of moments (see the module doc).

    Unclipped noise: ``max(||r||^2 - N sigma^2, 0) / tr(A A^T)``. Noise
    clipped to ``[-1, 1]`` (``clip``): the ``tau^2 >= 0`` that solves

        sum_i E[(clip(mu_i + e_i) - mu_i)^2] = ||r||^2,   e_i ~ N(0, tau^2 a_i + sigma^2)

    with ``mu = A G`` and ``a = diag(A A^T)`` (:func:`gram_diagonal`): the
    expected squared residual when ``x = G + tau z`` and ``y = clip(A x + n)``
    (:func:`clipped_moments`; increasing in ``tau^2``, solved by a safeguarded
    Newton iteration). ``0`` when the residual is within the clipped noise
    alone; :data:`TAU2_MAX` when no ``tau`` explains it.

    Args:
        op: the (batched) linear operator.
        r: the measurement residuals ``y - A G`` ``[B, ...]``.
        sigma: the noise's standard deviation on the measurements' scale.
        like: the images ``G`` ``[B, C, H, W]``.
        clip: whether the noisy measurements were clipped to ``[-1, 1]`` (:func:`noise_clips`).
    """
    if clip:
        a = gram_diagonal(op, like).flatten(1).to(r.dtype)
        return _clipped_prior_variance(a, op.A(like).flatten(1).to(r.dtype), r, sigma)
    n = r[0].numel()
    excess = (_rows(r) - n * float(sigma) ** 2).clamp_min(0.0)
    return excess / gram_trace(op, like).clamp_min(torch.finfo(r.dtype).tiny)


@torch.no_grad()
def noise_variance(op: LinearOperator, like: Tensor, sigma: float, clip: bool = False) -> Tensor:
    """The noise variance per sample ``[B]`` in ``prox``'s ``lambda = variance / tau^2``.

    ``sigma^2`` for unclipped noise. For noise clipped to ``[-1, 1]``: the
    variance of ``clip(mu_i + n_i)`` at ``mu = A G`` (:func:`clipped_moments`),
    averaged over the measurements weighted by ``a = diag(A A^T)`` (the
    measurements that see the image; for a mask, the observed pixels).

    Args:
        op: the (batched) linear operator.
        like: the images ``G`` ``[B, C, H, W]``.
        sigma: the noise's standard deviation on the measurements' scale.
        clip: whether the noisy measurements were clipped to ``[-1, 1]``.
    """
    if not clip:
        return torch.full((like.shape[0],), float(sigma) ** 2, dtype=like.dtype, device=like.device)
    return _clipped_noise_variance(gram_diagonal(op, like).flatten(1), op.A(like).flatten(1), sigma)


def _clipped_noise_variance(a: Tensor, mu: Tensor, sigma: float) -> Tensor:
    """``sum_i a_i Var clip(mu_i + n_i) / sum_i a_i`` per sample (``a``, ``mu``: ``[B, N]``)."""
    _, _, var = clipped_moments(mu, float(sigma))
    return (a * var).sum(1) / a.sum(1).clamp_min(torch.finfo(mu.dtype).tiny)


@dataclass
class ConsistencyStep:
    """What :func:`consistency_step` returns.

    Attributes:
        image: the corrected images ``G + correction`` (``G``'s dtype and device; not clamped).
        correction: ``d`` ``[B, C, H, W]`` in ``G``'s dtype (zero for ``none`` and non-finite samples).
        damping: ``lambda`` per sample (``0`` for ``project``; ``inf`` where ``prox`` left ``G`` as it is).
        residual: per sample, the relative residual of the normal equations
            ``||A^T (A d - r) + lambda d|| / ||A^T r||`` in the work dtype (0 where ``r = 0``).
        converged: per sample, whether the solve reached its tolerance (CG; a closed form always does).
    """

    image: Tensor
    correction: Tensor
    damping: Tensor
    residual: Tensor
    converged: Optional[Tensor] = None


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
    ids: Optional[Sequence[str]] = None,
    warn: bool = True,
) -> ConsistencyStep:
    """Apply the ``project`` or ``prox`` step to the generator's images (see the module doc for the formulas).

    Warns (one warning each, naming the problems by ``ids``, else by sample
    index) about problems whose solve is approximate (CG short of its
    tolerance, or a normal-equation residual above :data:`RESIDUAL_WARNING`),
    problems ``prox`` leaves unchanged (the residual is within the noise:
    ``tau = 0``) and problems with a non-finite image or residual (left
    unchanged).

    Args:
        op: the batched operator (linear, with ``A_adjoint``).
        image: ``G`` ``[B, C, H, W]``.
        y: the observations ``[B, ...]``.
        mode: ``"none"``, ``"project"`` or ``"prox"``.
        sigma: the noise's std for ``prox`` (default: the operator's noise model's ``std``).
        tau: the prior's std for ``prox``, a number or one per sample (default: fitted, :func:`prior_variance`).
        tol: the solve's relative tolerance (default by dtype, :data:`DEFAULT_TOL`).
        max_iter: the most CG iterations.
        ids: the problems' names, for the warnings.
        warn: emit those warnings.

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
    g_fit = torch.where(_col(ok, g), g, 0.0)
    lam = torch.zeros(b, dtype=work, device=image.device)
    keep_g = torch.zeros(b, dtype=torch.bool, device=image.device)
    if mode == "prox":
        s = noise_std(op) if sigma is None else float(sigma)
        clip = noise_clips(op)
        if s > 0:
            # (Clipped noise: diag(A A^T) and A G once, for the fit and the noise variance.)
            a, mu = (gram_diagonal(op, g_fit).flatten(1), op.A(g_fit).flatten(1)) if clip else (None, None)
            if tau is not None:
                t2 = torch.as_tensor(tau, dtype=work, device=g.device).expand(b) ** 2
            elif clip:
                t2 = _clipped_prior_variance(a, mu, r, s)
            else:
                t2 = prior_variance(op, r, s, g_fit)
            keep_g = t2 <= 0  # the residual is within the noise: no correction
            v = _clipped_noise_variance(a, mu, s) if clip else torch.full_like(t2, s**2)
            lam = torch.where(keep_g, math.inf, v / torch.where(keep_g, 1.0, t2))
            r = torch.where(_col(keep_g, r), 0.0, r)
    d, cg, tol_used = _least_norm(op, r, torch.where(torch.isfinite(lam), lam, 1.0), tol, max_iter)
    d = torch.where(_col(ok, d), d, 0.0)
    # The check every step gets: the normal equations of min ||A d - r||^2 + lambda ||d||^2.
    lam_f = _col(torch.where(torch.isfinite(lam), lam, 0.0), d)
    normal = op.A_adjoint(op.A(d) - r) + lam_f * d
    scale = _rows(op.A_adjoint(r)).sqrt()
    residual = torch.where(scale > 0, _rows(normal).sqrt() / scale.clamp_min(torch.finfo(work).tiny), 0.0)
    converged = torch.ones(b, dtype=torch.bool, device=image.device) if cg is None else cg.converged | ~ok
    if warn:
        _warn_step(mode, ids, ok, keep_g, converged, residual, cg, tol_used)
    correction = d.to(image.dtype)
    return ConsistencyStep(image + correction, correction, lam, residual, converged)


def _warn_step(
    mode: str,
    ids: Optional[Sequence[str]],
    ok: Tensor,
    keep_g: Tensor,
    converged: Tensor,
    residual: Tensor,
    cg: Optional[CGResult],
    tol: float,
) -> None:
    """:func:`consistency_step`'s warnings: one per kind, naming the problems."""
    approx = (ok & (~converged | (residual > RESIDUAL_WARNING))).nonzero().flatten().tolist()
    if approx:
        how = (
            f"conjugate gradients stopped at relative residual {float(cg.residual[approx].max()):.3g} "
            f"(tol {tol:g}) after {int(cg.iterations[approx].max())} iterations; "
            if cg is not None
            else ""
        )
        warnings.warn(
            f"consistency {mode!r}: the step of {_names(ids, approx)} is approximate ({how}worst normal-equation "
            f"residual {float(residual[approx].max()):.3g}); raise max_iter, or use 'prox' for noisy problems",
            stacklevel=3,
        )
    kept = (ok & keep_g).nonzero().flatten().tolist()
    if kept:
        warnings.warn(
            f"consistency {mode!r} left {_names(ids, kept)} unchanged (x = G): tau = 0 (the measurement "
            "residual is within the noise, so G is taken to explain y)",
            stacklevel=3,
        )
    bad = (~ok).nonzero().flatten().tolist()
    if bad:
        warnings.warn(
            f"consistency {mode!r} left {_names(ids, bad)} unchanged (x = G): non-finite image or residual",
            stacklevel=3,
        )
