"""Exact Euclidean projections used as constraints in ILO.

* :func:`project_l1_ball` -- each row of ``v`` onto ``{w : ||w||_1 <= radius}``
  (fast, exact; see ``docs/projections.md``).
* :func:`project_l1_ball_sort` -- the sort-based reference (Duchi et al. 2008).
* :func:`project_l1_ball_` -- in place, ``||param - anchor||_1 <= radius`` per sample.
* :func:`project_sphere_` -- in place, onto the sphere of radius ``sqrt(n)`` per sample.

All functions are batched over the leading dim (one constraint per sample)
with no Python loop over samples, run on the device of their input, and
compute in float32 or float64 whatever the autocast state (projections are
precision-sensitive).

The l1 projections take ``impl``, the algorithm that finds the threshold
(:data:`L1_IMPLS`): ``"sort"`` (Duchi et al.'s sort, the specification),
``"newton"`` (Michelot's exact search in PyTorch), ``"kernel"`` (the compiled
CPU kernel, :mod:`ilo_pl.ops._cpu`) or ``"auto"`` (the default; see
:func:`l1_impl_for`). An explicit ``impl`` that cannot run on its input
raises; only ``"auto"`` falls back. ``ILO_PL_OPS=native`` changes only what
``"auto"`` picks (never the kernel).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ilo_pl.ops._cpu import build_error, l1_projection_kernel
from ilo_pl.policy import check_impl, native_only
from ilo_pl.policy import work_dtype

Radius = Union[float, Tensor]

#: The values of the l1 projections' ``impl`` argument.
L1_IMPLS = ("auto", "kernel", "newton", "sort")

#: Newton (Michelot) iterations before the exact sort-based fallback on the
#: remaining candidates. Observed counts are 2-9 (see docs/projections.md);
#: the cap only bounds adversarial inputs.
MAX_NEWTON_ITERS = 50
#: Size of the strided sample whose threshold starts the search (rows of at
#: least ``4 * SAMPLE_SIZE`` entries); it only saves steps, never changes the result.
SAMPLE_SIZE = 1024


def _check_rows(v: Tensor, name: str) -> None:
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor; got {type(v).__name__}")
    if v.dim() != 2:
        raise ValueError(
            f"{name} expects a [B, n] tensor; got shape {tuple(v.shape)} "
            "(flatten each sample first, e.g. v.reshape(B, -1))"
        )
    if not v.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor; got {v.dtype} (cast with .float())")


def _as_radius(radius: Radius, batch: int, like: Tensor) -> Tensor:
    """Radius as a ``[batch]`` tensor of ``like``'s dtype and device, validated."""
    if not isinstance(radius, (Tensor, float, int)):
        raise TypeError(f"radius must be a number or a tensor; got {type(radius).__name__}")
    if isinstance(radius, Tensor):
        r = radius.to(device=like.device, dtype=like.dtype)
    else:
        r = torch.tensor(float(radius), device=like.device, dtype=like.dtype)
    if r.dim() == 0:
        r = r.expand(batch).contiguous()
    if r.shape != (batch,):
        raise ValueError(f"radius must be a scalar or have shape [{batch}]; got {tuple(r.shape)}")
    if bool(((r < 0) | torch.isnan(r)).any()):
        raise ValueError("an l1 radius must be >= 0 (use inf for no constraint)")
    return r


def _theta_sort(u: Tensor, r: Tensor) -> Tensor:
    """Duchi et al.'s threshold for rows of ``u >= 0`` with ``||u_b||_1 > r_b`` (``O(n log n)``)."""
    n = u.shape[1]
    mu, _ = torch.sort(u, dim=1, descending=True)
    cumsum = mu.cumsum(1)
    j = torch.arange(1, n + 1, device=u.device, dtype=u.dtype)
    cond = mu - (cumsum - r[:, None]) / j > 0
    # rho = last index where cond holds (cond is true on a prefix)
    rho = cond.to(torch.int64).sum(1).clamp(min=1)
    theta = (cumsum.gather(1, (rho - 1)[:, None]).squeeze(1) - r) / rho.to(u.dtype)
    return theta.clamp(min=0)


def project_l1_ball_sort(v: Tensor, radius: Radius) -> Tensor:
    """Reference projection of each row of ``v`` ([B, n]) onto the l1 ball (Duchi et al. 2008).

    The sort-based method: ``O(n log n)`` per row. Kept as the reference that
    the fast method is tested and benchmarked against.

    Args:
        v: ``[B, n]`` float tensor.
        radius: a scalar or a ``[B]`` tensor of radii.

    Returns:
        The projected ``[B, n]`` tensor (a new tensor).
    """
    _check_rows(v, "project_l1_ball_sort")
    b, n = v.shape
    r = _as_radius(radius, b, v)
    if n == 0:  # empty rows are inside every ball (and have no entry to sort)
        return v.clone()
    u = v.abs()
    inside = u.sum(1) <= r
    theta = _theta_sort(u, torch.where(inside, torch.zeros_like(r), r))
    w = torch.sign(v) * (u - theta[:, None]).clamp(min=0)
    return torch.where(inside[:, None], v, w)


def _compact(w: Tensor, keep: Tensor) -> Tensor:
    """Pack the kept entries of each row of ``w`` left into a zero-padded ``[B, max count]`` tensor.

    The zero padding is harmless because only entries ``> theta >= 0`` count.
    """
    b = w.shape[0]
    vals = w[keep]  # row-major, so grouped by row
    cnt = keep.sum(1)
    width = int(cnt.max()) if vals.numel() else 0
    rows = torch.repeat_interleave(torch.arange(b, device=w.device), cnt)
    starts = cnt.cumsum(0) - cnt
    cols = torch.arange(vals.numel(), device=w.device) - starts[rows]
    out = w.new_zeros(b, width)
    out[rows, cols] = vals
    return out


@torch.no_grad()
def _l1_threshold(
    u: Tensor,
    r: Tensor,
    todo: Tensor,
    norm1: Tensor,
    max_iter: int = MAX_NEWTON_ITERS,
    guess: Optional[Tensor] = None,
    buf: Optional[Tensor] = None,
) -> Tensor:
    """Exact soft threshold ``theta`` of each row of ``u >= 0`` for the l1 ball of radius ``r``.

    Michelot's (1986) algorithm, i.e. Newton's method on the convex, piecewise
    linear, decreasing ``f(t) = sum_i max(u_i - t, 0) - r`` started left of its
    root: each step ``t <- t + f(t) / #{u_i > t}`` stays a lower bound of the
    root and shrinks the candidate set ``{u_i > t}``; once a step leaves the
    set unchanged, ``t`` is the root exactly (``f`` is linear on that piece).
    A start right of the root is fine too: ``f`` is convex, so one step from
    there lands left of the root, and the iteration goes on from there. The
    start is ``guess`` when given (e.g. the previous optimizer step's
    threshold, usually a step or two from the root), else, for long rows, the
    threshold of a strided sample. Every step is a few passes over one
    buffer, vectorised over the batch; no per-sample Python branching.

    Args:
        u: ``[B, n]`` non-negative values (``|v|``).
        r: ``[B]`` radii.
        todo: ``[B]`` bool, rows to solve (outside the ball, ``0 < r < inf``);
            other rows get ``theta = 0``.
        norm1: ``[B]`` ``u.sum(1)`` (already computed by the caller).
        max_iter: Newton steps before the exact sort-based fallback on the
            remaining candidates of unfinished rows.
        guess: ``[B]`` starting thresholds (any values; only saves steps).
        buf: ``[B, n]`` scratch buffer of ``u``'s dtype (allocated if ``None``).

    Returns:
        ``theta`` ``[B]`` in ``u.dtype``.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1 (the first step makes the bound safe); got {max_iter}")
    b, n = u.shape
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    r_eff = torch.where(todo, r, zero)
    # Michelot's start (||u||_1 - r) / n is a lower bound of the root.
    lower = ((norm1 - r_eff) / n).clamp(min=0)
    if guess is not None:
        lo = torch.maximum(guess.to(u.dtype), lower)
    else:
        # max(u) - r is one too (the largest entry alone overshoots by that much).
        umax = u.amax(1)
        lo = torch.maximum(lower, umax - r_eff).clamp(min=0)
        if n >= 4 * SAMPLE_SIZE:
            # Start at the threshold of a strided sample instead (radius scaled
            # to the sample): usually close to the root, on either side.
            sample = u[:, :: n // SAMPLE_SIZE]
            sampled = _theta_sort(sample, r_eff * (sample.shape[1] / n))
            lo = torch.where(sampled < umax, torch.maximum(sampled, lo), lo)
    done = ~todo
    # Counts are carried as floats (sums of 0/1), exact below 2**24 entries.
    cdt = torch.float64 if n >= 2**24 else u.dtype
    c_prev = torch.full((b,), -1.0, dtype=cdt, device=u.device)
    if buf is None:
        buf = torch.empty_like(u)
    first = True
    for _ in range(max_iter):
        torch.sub(u, lo[:, None], out=buf).clamp_(min=0)
        g = buf.sum(1)  # f(lo) + r
        # #{u > lo}: u - lo > 0 exactly when u > lo (sign_ + sum: far faster than count_nonzero on CPU)
        c = buf.sign_().sum(1, dtype=cdt)
        # Equal counts after a step means an identical set: lo is the root.
        done = done | (c == c_prev)
        step = ((g - r_eff) / c.clamp(min=1)).to(u.dtype)
        # Only the first step may go down (from a start right of the root); later
        # ones are clamped at 0 so the bound stays monotone under rounding.
        lo = torch.where(done, lo, (lo + step).clamp(min=0) if first else lo + step.clamp(min=0))
        if first and guess is not None:
            # A guess at or above max(u) has no entry above it (no Newton step):
            # restart those rows at the lower bound max((||u||_1 - r) / n, max(u) - r).
            empty = (c == 0) & ~done
            if bool(empty.any()):
                restart = torch.maximum(lower, u.amax(1) - r_eff).clamp(min=0)
                lo = torch.where(empty, restart, lo)
                c = torch.where(empty, torch.full_like(c, -1.0), c)
        c_prev, first = c, False
        if bool(done.all()):  # one scalar sync per step (free on CPU)
            break
    else:
        left = ~done
        if bool(left.any()):
            lo = lo.clone()
            lo[left] = _fallback_threshold(u[left], lo[left], r_eff[left])
    return torch.where(todo, lo, zero)


def _fallback_threshold(u: Tensor, lo: Tensor, r: Tensor) -> Tensor:
    """Exact threshold of rows whose Newton search hit the cap.

    The candidates ``{u > lo}`` alone determine theta (entries ``<= lo <= theta``
    are never active), so the sort-based threshold on them is exact.
    """
    return _theta_sort(_compact(u, u > lo[:, None]), r)


def _rows_outside(norm1: Tensor, r: Tensor) -> Tuple[Tensor, bool, bool, bool]:
    """``([B] outside mask, any outside, all outside, any outside with radius 0)``, with one host read.

    Raises:
        ValueError: a row with a finite radius has a non-finite norm (inf/NaN entries or overflow).
    """
    outside = norm1 > r
    bad = ~torch.isfinite(norm1) & torch.isfinite(r)
    flags = torch.stack([outside.any(), outside.all(), (outside & (r == 0)).any(), bad.any()]).tolist()
    any_outside, all_outside, any_zero, any_bad = flags
    if any_bad:
        _raise_non_finite(bad.nonzero().flatten().tolist())
    return outside, bool(any_outside), bool(all_outside), bool(any_zero)


def _sort_threshold(u: Tensor, r: Tensor, todo: Tensor) -> Tensor:
    """Duchi et al.'s threshold of the ``todo`` rows of ``u >= 0``; 0 on the others (the ``"sort"`` impl)."""
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    # Rows not to solve get radius 0 (a valid, discarded problem), so one sort serves the batch.
    return torch.where(todo, _theta_sort(u, torch.where(todo, r, zero)), zero)


def _project_rows(v: Tensor, r: Tensor, impl: str = "newton") -> Tuple[Tensor, Tensor]:
    """Projection of ``v`` ([B, n], work dtype) and the ``[B]`` mask of rows that were outside.

    ``impl`` (``"newton"`` or ``"sort"``) only picks how the threshold is found.
    """
    u = v.abs()
    norm1 = u.sum(1)
    outside, any_outside, _, _ = _rows_outside(norm1.detach(), r.detach())
    if not any_outside:  # early out: all rows inside (callers copy if needed)
        return v, outside
    todo = outside & (r > 0)
    if impl == "sort":
        theta = _sort_threshold(u.detach(), r.detach(), todo)
    else:
        theta = _l1_threshold(u.detach(), r.detach(), todo, norm1.detach())
    # radius 0: theta = max|v| gives exact zeros.
    theta = torch.where(outside & (r == 0), u.detach().amax(1), theta)
    if v.requires_grad or r.requires_grad:
        # Differentiable form of the same theta: (sum of active - r) / count.
        m = (u.detach() > theta[:, None]) & todo[:, None]
        c = m.sum(1).clamp(min=1).to(v.dtype)
        theta_g = (torch.where(m, u, torch.zeros_like(u)).sum(1) - r) / c
        theta = torch.where(todo, theta_g, theta)
        return v - torch.clamp(v, -theta[:, None], theta[:, None]), outside
    # Soft threshold v - clip(v, -theta, theta): equals sign(v) max(|v| - theta, 0)
    # and, with theta = 0 on rows inside, returns those rows bit-identical.
    # |v| is no longer needed (and carries no graph here): reuse it as the output.
    t = theta[:, None]
    out = torch.clamp(v, -t, t, out=u)
    return torch.sub(v, out, out=out), outside


def project_l1_ball(v: Tensor, radius: Radius, impl: str = "auto") -> Tensor:
    """Project each row of ``v`` ([B, n]) onto ``{w : ||w||_1 <= radius}`` exactly.

    By default uses Michelot's exact threshold search (see
    :func:`_l1_threshold` and ``docs/projections.md``): ``O(n)`` per step,
    typically 2-9 steps, each vectorised over the batch; many times faster
    than the sort-based :func:`project_l1_ball_sort` and equal to it up to
    float rounding. Rows already inside are returned unchanged
    (bit-identical); a radius of ``inf`` is no constraint and ``0`` projects
    to the origin. Differentiable almost everywhere in ``v`` and ``radius``
    (``impl="kernel"`` excepted).

    Args:
        v: ``[B, n]`` float tensor (half precision is computed in float32).
        radius: a scalar or a ``[B]`` tensor of radii (``>= 0``).
        impl: how the threshold is found: ``"newton"`` (Michelot's search),
            ``"sort"`` (Duchi et al.'s sort, the specification, in the same
            dtype and with the same checks), ``"kernel"`` (the compiled CPU
            kernel of :func:`project_l1_ball_`, applied to a copy around a
            zero anchor; CPU tensors, no autograd) or ``"auto"`` (``"newton"``).

    Returns:
        The projected ``[B, n]`` tensor (always a new tensor, ``v``'s dtype).

    Raises:
        TypeError: ``v`` is not a floating-point tensor.
        ValueError: ``v`` is not 2-D; ``radius`` has the wrong shape or is
            negative / NaN; a row with a finite radius holds inf/NaN;
            ``impl`` is unknown, or ``"kernel"`` with a non-CPU ``v`` or with
            ``v`` or ``radius`` requiring grad.
        RuntimeError: ``impl="kernel"`` and the kernel cannot be built here.

    Example:
        >>> import torch
        >>> v = torch.tensor([[3.0, -2.0, 0.5], [0.5, -0.25, 0.0]])
        >>> w = project_l1_ball(v, 3.0)  # row 0 is outside (l1 norm 5.5), row 1 inside
        >>> w
        tensor([[ 2.0000, -1.0000,  0.0000],
                [ 0.5000, -0.2500,  0.0000]])
        >>> w.abs().sum(1)
        tensor([3.0000, 0.7500])
    """
    _check_rows(v, "project_l1_ball")
    check_impl("project_l1_ball", impl, L1_IMPLS)
    b, n = v.shape
    work = work_dtype(v.dtype)
    x = v.to(work)
    r = _as_radius(radius, b, x)
    if b == 0 or n == 0:
        return v.clone()
    if impl == "kernel":
        return _project_rows_kernel(v, x, r)
    w, outside = _project_rows(x, r, "sort" if impl == "sort" else "newton")
    if w is x:  # all rows inside
        return v.clone()
    # Rows inside are exact in the work dtype, so casting back keeps them bit-identical.
    return w.to(v.dtype)


def _project_rows_kernel(v: Tensor, x: Tensor, r: Tensor) -> Tensor:
    """:func:`project_l1_ball` with ``impl="kernel"``: the in-place kernel on a copy, around a zero anchor."""
    if torch.is_grad_enabled() and (v.requires_grad or r.requires_grad):
        raise ValueError(
            "project_l1_ball: impl='kernel' is not differentiable, and v or radius requires grad; "
            "use impl='newton', 'sort' or 'auto', or call it under torch.no_grad()"
        )
    out = x.detach().clone(memory_format=torch.contiguous_format)  # x may be v itself: never write v
    _require_kernel("project_l1_ball", out)
    b, n = out.shape
    _project_l1_ball_cpu_(out, torch.zeros_like(out), r.detach(), L1Workspace(), b, n)
    return out.to(v.dtype)


class L1Workspace:
    """Scratch buffers and the last thresholds of one l1-constrained variable.

    Passing the same workspace to :func:`project_l1_ball_` at every optimizer
    step (as :class:`~ilo_pl.callbacks.L1BallProjection` does, one per
    constrained parameter) saves the allocation of ``[B, n]`` buffers per
    step (one for ``impl="kernel"``, two for ``"sort"``, three for
    ``"newton"``) and starts the threshold search at the previous step's
    thresholds. For ``"newton"`` that skips the strided-sample sort and about
    one Newton step (4-5 steps remain typical: an optimizer step moves many
    entries across the threshold); the kernel packs only the entries above
    3/4 of the previous threshold and solves on those. It never changes the
    result: both searches are exact from any start (``"sort"`` needs none).

    With ``host_reads=False`` (what :class:`~ilo_pl.callbacks.L1BallProjection`
    uses on accelerators) the projection never reads a value back to the
    host, so it does not stall the device's queue: Newton's method needs
    host-side convergence tests (several per step), so only ``impl="sort"``
    runs (``"auto"`` picks it): Duchi et al.'s sort-based threshold for every
    sample (exact, one segmented sort; GPUs sort fast), samples kept inside
    their ball by ``torch.where``. Raising on inf/NaN samples would need a
    read too: such a sample is left as it is, and its loss turns non-finite
    at the next step, where the engine marks it as failed.

    Args:
        anchor: the ball's centre this workspace serves, if any (kept only so
            a caller can tell a workspace of a stale variable from a fresh one).
        host_reads: whether the projection may read values back to the host
            (early exits, the convergence test, the inf/NaN check that raises).
    """

    def __init__(self, anchor: Optional[Tensor] = None, host_reads: bool = True) -> None:
        self.anchor = anchor
        self.host_reads = bool(host_reads)
        self.theta: Optional[Tensor] = None
        self._bufs: Optional[Tuple[Tensor, ...]] = None
        self._radius: Optional[Tuple[tuple, Tensor]] = None

    def radius(self, radius: Radius, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``radius`` as a validated ``[batch]`` tensor; a number is converted once, not every step."""
        if isinstance(radius, Tensor):
            return _as_radius(radius, batch, torch.empty(0, dtype=dtype, device=device))
        key = (float(radius), batch, dtype, device)
        if self._radius is None or self._radius[0] != key:
            self._radius = (key, _as_radius(radius, batch, torch.empty(0, dtype=dtype, device=device)))
        return self._radius[1]

    def buffers(
        self, shape: Tuple[int, int], dtype: torch.dtype, device: torch.device, count: int = 3
    ) -> Tuple[Tensor, ...]:
        """``count`` buffers of ``shape``, reused while shape, dtype and device stay the same.

        A new shape, dtype or device means another variable: the buffers are
        reallocated and the warm start is dropped. Asking for more buffers of
        the same kind only adds the missing ones.
        """
        bufs = self._bufs
        if bufs is None or bufs[0].shape != shape or bufs[0].dtype != dtype or bufs[0].device != device:
            bufs = ()
            self.theta = None
        if len(bufs) < count:
            bufs = bufs + tuple(torch.empty(shape, dtype=dtype, device=device) for _ in range(count - len(bufs)))
        self._bufs = bufs  # type: ignore[assignment]
        return bufs[:count]


def _kernel_unfit(param: Tensor) -> Optional[str]:
    """Why the compiled CPU kernel cannot take ``param``, or ``None`` if it can (its build aside)."""
    # A device capability, not the host-read policy: the kernel is C++ over CPU memory.
    if param.device.type != "cpu":
        return f"it runs on CPU tensors; got a {param.device.type} tensor"
    if param.dtype not in (torch.float32, torch.float64):
        return f"it handles float32 and float64; got {param.dtype}"
    if not param.is_contiguous():
        return "it needs a contiguous tensor; got a non-contiguous view"
    return None


def _require_kernel(fn: str, param: Tensor) -> None:
    """Raise unless an explicit ``impl="kernel"`` can run on ``param`` (builds the kernel if needed)."""
    why = _kernel_unfit(param)
    if why is not None:
        raise ValueError(f"{fn}: impl='kernel' cannot run here: {why}; use impl='newton', 'sort' or 'auto'")
    if l1_projection_kernel() is None:
        raise RuntimeError(
            f"{fn}: impl='kernel' but the CPU l1-projection kernel could not be built ({build_error()}); "
            "install a C++ compiler and ninja, or use impl='newton', 'sort' or 'auto'"
        )


def l1_impl_for(param: Tensor, impl: str = "auto", host_reads: bool = True) -> str:
    """The threshold method :func:`project_l1_ball_` runs for ``param``: ``"kernel"``, ``"newton"`` or ``"sort"``.

    ``"auto"`` picks, in order: ``"sort"`` without host reads (the only
    method that needs none); ``"kernel"`` for a contiguous float32/float64 CPU
    tensor, unless ``ILO_PL_OPS=native`` is set or the kernel cannot be built
    here (building it on first use); else ``"newton"``. An explicit ``impl``
    is returned as it is once checked to run on ``param``.

    Args:
        param: the variable to project (its device, dtype and layout decide).
        impl: one of :data:`L1_IMPLS`.
        host_reads: whether the projection may read values on the host
            (:attr:`L1Workspace.host_reads`).

    Raises:
        ValueError: ``impl`` is unknown, or cannot run on ``param``
            (``"kernel"`` off the CPU or on another dtype or layout;
            ``"kernel"`` or ``"newton"`` without host reads).
        RuntimeError: ``impl="kernel"`` and the kernel cannot be built here.
    """
    check_impl("project_l1_ball_", impl, L1_IMPLS)
    if impl == "auto":
        if not host_reads:
            return "sort"
        if not native_only() and _kernel_unfit(param) is None and l1_projection_kernel() is not None:
            return "kernel"
        return "newton"
    if not host_reads and impl != "sort":
        raise ValueError(
            f"project_l1_ball_: impl={impl!r} reads values on the host (its convergence test or "
            "status), but the workspace has host_reads=False; use impl='sort' or 'auto'"
        )
    if impl == "kernel":
        _require_kernel("project_l1_ball_", param)
    return impl


@torch.no_grad()
def project_l1_ball_(
    param: Tensor,
    anchor: Tensor,
    radius: Radius,
    workspace: Optional[L1Workspace] = None,
    impl: str = "auto",
) -> None:
    """In place: move each sample of ``param`` so that ``||param - anchor||_1 <= radius``.

    ``param`` and ``anchor`` are ``[B, ...]``; the deviation ``d = param -
    anchor`` is projected in float32 (or float64 if ``param`` is float64) and
    samples outside their ball become ``anchor + d - clip(d, -theta, theta)``
    with their exact threshold ``theta`` (entries with ``|d| <= theta`` land
    exactly on the anchor). Samples already inside are not written at all
    (bit-identical), so a projection that is a no-op never perturbs ``param``
    by rounding. With a ``workspace`` carried from step to step, no
    allocation of the parameter's size.

    Args:
        param: ``[B, ...]`` floating tensor, modified in place.
        anchor: tensor of the same shape (the ball's centres).
        radius: a scalar or a ``[B]`` tensor of radii (``>= 0``).
        workspace: reusable buffers and warm start (see :class:`L1Workspace`).
        impl: how the threshold is found (all exact; see :func:`l1_impl_for`):
            ``"sort"`` -- Duchi et al.'s sort, the specification (the only
            one without host reads); ``"newton"`` -- Michelot's search in
            PyTorch, a few passes over ``param`` per step; ``"kernel"`` -- the
            compiled CPU kernel (contiguous float32/float64 CPU tensors), one
            call that also writes ``param``; ``"auto"`` -- the default pick.

    Raises:
        ValueError: shapes differ, ``param`` has no batch dim, bad radius, a
            sample with a finite radius holds inf/NaN (with host reads), or
            ``impl`` is unknown or cannot run on ``param``.
        TypeError: ``param`` is not floating point.
        RuntimeError: ``impl="kernel"`` and the kernel cannot be built here.
    """
    if not isinstance(param, Tensor) or not isinstance(anchor, Tensor):
        raise TypeError("project_l1_ball_ expects tensors for param and anchor")
    if param.shape != anchor.shape:
        raise ValueError(
            f"parameter {tuple(param.shape)} and anchor {tuple(anchor.shape)} shapes differ"
        )
    if param.dim() == 0:
        raise ValueError("project_l1_ball_ expects [B, ...] tensors; got a scalar (add a batch dim)")
    if not param.is_floating_point():
        raise TypeError(f"project_l1_ball_ expects a floating-point param; got {param.dtype}")
    check_impl("project_l1_ball_", impl, L1_IMPLS)
    b = param.shape[0]
    n = param[0].numel() if b else 0
    work = work_dtype(param.dtype)
    if b == 0 or n == 0:
        _as_radius(radius, b, torch.empty(0, dtype=work, device=param.device))  # still validated
        return
    ws = workspace if workspace is not None else L1Workspace()
    impl = l1_impl_for(param, impl, ws.host_reads)
    if impl == "kernel":
        _project_l1_ball_cpu_(param, anchor, radius, ws, b, n)
    elif ws.host_reads:
        _project_l1_ball_reads_(param, anchor, ws.radius(radius, b, work, param.device), ws, b, n, impl)
    else:
        _project_l1_ball_no_reads_(param, anchor, ws.radius(radius, b, work, param.device), ws, b, n)


def _project_l1_ball_reads_(
    param: Tensor, anchor: Tensor, r: Tensor, ws: L1Workspace, b: int, n: int, impl: str
) -> None:
    """:func:`project_l1_ball_` in PyTorch with host reads: ``impl`` ``"newton"`` or ``"sort"``.

    One host read tells whether any sample is outside (else nothing is
    written), whether all are (a faster write) and whether one holds inf/NaN
    (which raises).
    """
    flat, centre, dev, u, *rest = _deviation(param, anchor, ws, b, n, count=3 if impl == "newton" else 2)
    norm1 = u.sum(1)
    outside, any_outside, all_outside, any_zero = _rows_outside(norm1, r)
    if not any_outside:
        return
    todo = outside & (r > 0)
    if impl == "sort":
        theta = _sort_threshold(u, r, todo)
    else:
        theta = _l1_threshold(u, r, todo, norm1, guess=ws.theta, buf=rest[0])
    if any_zero:  # radius 0: theta = max|v| gives exact zeros
        theta = torch.where(outside & (r == 0), u.amax(1), theta)
    if impl == "newton":  # the next step's start (the sort needs none)
        ws.theta = theta if ws.theta is None else torch.where(todo, theta, ws.theta)
    _soft_threshold_(param, flat, centre, dev, u, theta, outside, all_outside)


def _project_l1_ball_no_reads_(param: Tensor, anchor: Tensor, r: Tensor, ws: L1Workspace, b: int, n: int) -> None:
    """:func:`project_l1_ball_` without a single host read (``L1Workspace(host_reads=False)``).

    Every sample gets Duchi et al.'s exact threshold (a segmented sort, so
    no iteration whose end the host must test); samples inside their ball
    (and inf/NaN ones, masked out by their non-finite norm) keep their own bits through
    ``torch.where``. Radius 0 needs no special case: the sort-based threshold
    is then ``max |d|``, which maps the sample onto its anchor.
    """
    flat, centre, dev, u = _deviation(param, anchor, ws, b, n, count=2)
    norm1 = u.sum(1)
    outside = (norm1 > r) & torch.isfinite(norm1)  # an inf/NaN sample is left as it is
    theta = _theta_sort(u, torch.where(outside, r, torch.zeros_like(r)))
    theta = torch.where(outside, theta, torch.zeros_like(theta))
    _soft_threshold_(param, flat, centre, dev, u, theta, outside)


def _deviation(param: Tensor, anchor: Tensor, ws: L1Workspace, b: int, n: int, count: int) -> List[Tensor]:
    """``[flat, centre, dev, u, *scratch]``: ``param`` and ``anchor`` as ``[b, n]`` rows, the
    deviation ``dev = flat - centre`` and ``u = |dev|`` in the work dtype (workspace buffers)."""
    work = work_dtype(param.dtype)
    dev, u, *rest = ws.buffers((b, n), work, param.device, count=count)
    flat = param.reshape(b, n)
    centre = anchor.reshape(b, n).to(device=param.device, dtype=work)
    torch.sub(flat, centre, out=dev)
    torch.abs(dev, out=u)
    return [flat, centre, dev, u, *rest]


def _soft_threshold_(
    param: Tensor,
    flat: Tensor,
    centre: Tensor,
    dev: Tensor,
    u: Tensor,
    theta: Tensor,
    outside: Tensor,
    all_outside: bool = False,
) -> None:
    """The write-back of every PyTorch impl: ``param = centre + dev - clip(dev, -theta, theta)`` where ``outside``.

    Exact zeros where ``|dev| <= theta``, so shrunk entries land exactly on
    the anchor; samples not ``outside`` keep their own bits (``(p - a) + a``
    need not equal ``p``). ``dev`` and ``u`` (the deviation and a scratch
    buffer, work dtype) are overwritten. ``all_outside`` (known from a host
    read) lets a contiguous work-dtype ``param`` be written in one add.
    """
    t = theta[:, None]
    # minimum/maximum, not clamp: a clamp with tensor bounds is ~10x slower on the CPU.
    torch.maximum(torch.minimum(dev, t, out=u), -t, out=u)
    dev.sub_(u)
    inplace = flat.dtype == dev.dtype and flat.data_ptr() == param.data_ptr() and param.is_contiguous()
    if inplace and all_outside:
        torch.add(centre, dev, out=flat)
        return
    dev.add_(centre)  # the projected point
    if inplace:
        torch.where(outside[:, None], dev, flat, out=flat)  # rows inside keep their own bits
    else:  # a copy (non-contiguous) or another dtype: rows inside are exact in the work dtype
        param.copy_(torch.where(outside[:, None], dev, flat).view(param.shape))


def _project_l1_ball_cpu_(param: Tensor, anchor: Tensor, radius: Radius, ws: L1Workspace, b: int, n: int) -> None:
    """:func:`project_l1_ball_` through the compiled CPU kernel: one call, one pass to check, one to write.

    The kernel packs the entries that can be active (those above 3/4 of the
    previous step's threshold, kept in ``ws``) in the pass that computes the
    norms, runs Newton's method on those only, and re-packs from a proven
    lower bound when the guess was off, so the result is exact from any
    guess. Sums over the candidates are in float64. It writes ``param``
    itself, with the formula of :func:`_soft_threshold_`.
    """
    op = l1_projection_kernel()
    r = ws.radius(radius, b, torch.float64, param.device).contiguous()
    (scratch,) = ws.buffers((b, n), param.dtype, param.device, count=1)
    theta = ws.theta
    if theta is None or theta.dtype != torch.float64 or theta.shape != (b,):
        theta = ws.theta = (
            torch.full((b,), math.nan, dtype=torch.float64) if theta is None else theta.to(torch.float64).contiguous()
        )
    centre = anchor.reshape(b, n).to(device=param.device, dtype=param.dtype).contiguous()
    status = op(param.view(b, n), centre, r, theta, scratch)  # per row: 0 inside ... 3 non-finite
    if int(status.max()) == 3:  # then the kernel wrote nothing
        _raise_non_finite(status.eq(3).nonzero().flatten().tolist())


def _raise_non_finite(rows: Sequence[int]) -> None:
    raise ValueError(
        f"rows {list(rows)} of the vector to project hold inf/NaN (or overflow), so their "
        "l1 projection is undefined; check the optimisation for divergence"
    )


@torch.no_grad()
def project_sphere_(param: Tensor, dims: Sequence[int]) -> None:
    """In place: rescale ``param`` so its norm over ``dims`` is ``sqrt(numel over dims)``.

    This is the sphere a standard Gaussian of that size concentrates on (the
    PULSE constraint for latents, and ILO's for noise maps). The norm is
    computed in float32 (float64 for float64 params); an all-zero slice stays
    zero (it has no direction).

    Args:
        param: floating tensor, modified in place.
        dims: the dims spanning one sphere (e.g. ``(1,)`` for ``[B, 512]``
            latents, ``(1, 2, 3)`` for ``[B, 1, H, W]`` noise maps).

    Raises:
        ValueError: ``dims`` is empty, repeats a dim or is out of range.
        TypeError: ``param`` is not floating point.
    """
    if not isinstance(param, Tensor) or not param.is_floating_point():
        raise TypeError("project_sphere_ expects a floating-point tensor")
    dims = tuple(int(d) for d in dims)
    nd = param.dim()
    if not dims:
        raise ValueError("project_sphere_ needs at least one dim to normalise over (e.g. dims=(1,))")
    if any(d < -nd or d >= nd for d in dims):
        raise ValueError(f"project_sphere_ dims {dims} out of range for a {nd}-D tensor")
    if len({d % nd for d in dims}) != len(dims):
        raise ValueError(f"project_sphere_ dims {dims} repeat a dim")
    n = math.prod(param.shape[d] for d in dims)
    work = work_dtype(param.dtype)
    norm = param.to(work).pow(2).sum(dim=dims, keepdim=True).sqrt().clamp_min(1e-12)
    param.mul_((math.sqrt(n) / norm).to(param.dtype))
