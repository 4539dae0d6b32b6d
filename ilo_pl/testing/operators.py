"""The operator contract as a test: :func:`check_operator` runs it on any operator.

ilo-pl's own tests run it on every shipped operator; run it on your own
operator (or on the one-sample operators your spec builds) before solving
with it. A failed property raises ``AssertionError`` naming it.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ilo_pl.operators.base import LinearOperator, Operator

#: The properties :func:`check_operator` checks, in the order it checks them
#: (the names its messages and its return value use).
PROPERTIES = (
    "measurement shape",
    "deterministic A",
    "batch == per-sample",
    "noise",
    "check_observation",
    "measurement_error",
    "superimpose",
    "linearity",
    "adjoint shape",
    "adjointness",
    "gradcheck",
)

# (rtol, atol) of the comparisons of results that should agree up to rounding,
# and the largest relative adjointness error, per dtype.
_TOLERANCES = {
    torch.float64: (1e-7, 1e-9, 1e-9),
    torch.float32: (1e-4, 1e-5, 1e-4),
}
_LOOSE = (1e-2, 1e-2, 1e-2)


class _Checker:
    """Names the operator and the property in every failure."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, prop: str, detail: str) -> None:
        raise AssertionError(f"check_operator: {self.label} fails {prop!r}: {detail}")

    @contextmanager
    def check(self, prop: str) -> Iterator[None]:
        """Turn an exception raised while checking ``prop`` into a failure of ``prop``."""
        try:
            yield
        except AssertionError:
            raise
        except Exception as err:  # noqa: BLE001 - any error of the operator is a failed property
            raise AssertionError(
                f"check_operator: {self.label} fails {prop!r}: raised {type(err).__name__}: {err}"
            ) from err

    def close(self, prop: str, got: Tensor, want: Tensor, rtol: float, atol: float, what: str) -> None:
        if got.shape != want.shape:
            self.fail(prop, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
        if not torch.allclose(got, want, rtol=rtol, atol=atol):
            worst = (got - want).abs().max().item()
            self.fail(prop, f"{what}: largest difference {worst:.3g} (rtol={rtol:g}, atol={atol:g})")


def _uniform(shape: Tuple[int, ...], seed: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Drawn on the CPU, then moved: the same inputs on every device.
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).to(device=device, dtype=dtype)


def _normal(shape: Tuple[int, ...], seed: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _prepared(
    ops: Optional[List[Operator]], op: Optional[Operator], device: torch.device, dtype: torch.dtype
) -> Tuple[Operator, Optional[List[Operator]]]:
    """Copies moved to ``device``/``dtype`` (the caller's operators stay as they are): (batched, one-sample)."""

    def move(o: Operator) -> Operator:
        try:
            return copy.deepcopy(o).to(device=device, dtype=dtype)
        except Exception as err:  # noqa: BLE001
            raise TypeError(
                f"check_operator works on a copy of {type(o).__name__} moved to {device} and {dtype}, but "
                f"copying it failed ({type(err).__name__}: {err}); make the operator deep-copyable"
            ) from err

    if ops is None:
        return move(op), None
    singles = [move(o) for o in ops]
    return Operator.stack(singles), singles


def check_operator(
    op: Union[Operator, Sequence[Operator]],
    shape: Sequence[int],
    *,
    batch_size: int = 3,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float64,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    adjoint_tol: Optional[float] = None,
    linear: Optional[bool] = None,
    observation: Optional[Tensor] = None,
    seed: int = 0,
) -> List[str]:
    """Check that ``op`` follows the operator contract; raise ``AssertionError`` naming what fails.

    The checks run on a copy of ``op`` moved to ``device`` and ``dtype``, with
    inputs ``x`` uniform in ``[-1, 1]`` (seeded with ``seed``):

    * ``measurement shape``: ``A(x)`` is a float tensor of ``dtype`` on
      ``device`` whose leading dim is the batch.
    * ``deterministic A``: ``A(x)`` is the same at every call (randomness
      belongs in the noise model).
    * ``batch == per-sample``: a batch gives the results of its samples alone,
      for ``A``, ``A_adjoint`` and ``measurement_error``; for per-problem
      operators (a list), the stacked operator gives what each gives alone.
    * ``noise``: ``op(x, generator)`` keeps ``A(x)``'s shape and dtype, is
      reproducible with generators seeded alike, and equals
      ``op.noise(op.A(x), generator)``.
    * ``check_observation``: a real observation passes it.
    * ``measurement_error``: a finite float ``[B]``.
    * ``superimpose``: ``None`` or an image of ``x``'s shape.
    * linear operators: ``linearity`` (``A(a x + b x') = a A(x) + b A(x')``),
      ``adjoint shape`` (``A_adjoint`` maps back to ``x``'s shape and dtype),
      ``adjointness`` (:meth:`~ilo_pl.operators.base.LinearOperator.adjointness_test`
      below ``adjoint_tol``).
    * ``gradcheck``: ``torch.autograd.gradcheck`` of ``A`` (and ``A_adjoint``)
      in float64, fast mode, on the same small batch.

    Args:
        op: the operator; or a list of one-sample operators (what a spec
            builds for several problems), checked stacked with
            :meth:`Operator.stack` against each alone.
        shape: ``(C, H, W)`` of the images the operator takes.
        batch_size: the batch of a single operator (a list's is its length).
        device: where to check (default: the operator's device).
        dtype: the dtype of the inputs and of the copy of the operator.
        atol: absolute tolerance of the comparisons that should agree up to
            rounding (default by dtype: ``1e-9`` in float64, ``1e-5`` in float32).
        rtol: relative tolerance of those (``1e-7`` in float64, ``1e-4`` in float32).
        adjoint_tol: the largest relative adjointness error (``1e-9`` in
            float64, ``1e-4`` in float32).
        linear: check the linear-operator properties; ``None`` (default): when
            ``op`` is a :class:`~ilo_pl.operators.base.LinearOperator`.
        observation: an observation batch for ``measurement_error`` and
            ``check_observation`` when observations are not measurements
            (class indices for a classifier); default ``op(x')`` of another
            input ``x'``, seeded.
        seed: seed of the inputs and of the noise generators.

    Returns:
        The names of the properties checked (those of :data:`PROPERTIES` that apply).

    Raises:
        AssertionError: ``check_operator: <operator> fails '<property>': <what was seen>``.
        TypeError/ValueError: on unusable arguments (not an operator; a shape
            that is not ``(C, H, W)``; a stacked operator given alone).

    Example:
        >>> import torch
        >>> from ilo_pl.operators import LinearOperator
        >>> from ilo_pl.testing.operators import check_operator
        >>> class Flip(LinearOperator):  # mirror the image left-right
        ...     def A(self, x):
        ...         return x.flip(-1)
        ...     def A_adjoint(self, y):
        ...         return y.flip(-1)
        >>> check_operator(Flip(), (3, 8, 8))[-2:]
        ['adjointness', 'gradcheck']
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be the image shape (C, H, W) with positive sizes; got {shape}")
    if isinstance(op, Operator):
        ops, single = None, op
        if op._stack_size() > 1:
            raise ValueError(
                f"{type(op).__name__} holds {op._stack_size()} per-problem parameter sets; give check_operator "
                "the list of one-sample operators instead, so the stack can be checked against each alone"
            )
        batch = int(batch_size)
        if batch < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    elif isinstance(op, (list, tuple)) and op and all(isinstance(o, Operator) for o in op):
        ops, single, batch = list(op), None, len(op)
    else:
        raise TypeError(
            "check_operator takes an Operator or a non-empty list of one-sample Operators; "
            f"got {type(op).__name__} (wrap a plain callable with ilo_pl.operators.as_operator)"
        )
    first = single if single is not None else ops[0]
    device = first._device() if device is None else torch.device(device)
    rtol_d, atol_d, adj_d = _TOLERANCES.get(dtype, _LOOSE)
    rtol = rtol_d if rtol is None else float(rtol)
    atol = atol_d if atol is None else float(atol)
    adjoint_tol = adj_d if adjoint_tol is None else float(adjoint_tol)

    c = _Checker(type(first).__name__)
    with c.check("batch == per-sample"):  # stacking itself is part of the per-problem contract
        work, singles = _prepared(ops, single, device, dtype)
    alone = singles if singles is not None else [work] * batch
    is_linear = isinstance(work, LinearOperator) if linear is None else bool(linear)
    if is_linear and not isinstance(work, LinearOperator):
        c.fail("linearity", "linear=True but it is not a LinearOperator (it has no A_adjoint); subclass "
               "LinearOperator and define A_adjoint, or check it with linear=False")
    done: List[str] = []
    x = _uniform((batch, *shape), seed, dtype, device)
    x2 = _uniform((batch, *shape), seed + 1, dtype, device)

    def generator(k: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed + k)

    with torch.no_grad():
        # -- A: shape, dtype, device, determinism, batch independence ----------
        with c.check("measurement shape"):
            y = work.A(x)
        if not torch.is_tensor(y) or not y.is_floating_point():
            c.fail("measurement shape", f"A(x) must be a float tensor; got {getattr(y, 'dtype', type(y).__name__)}")
        if y.dim() < 1 or y.shape[0] != batch:
            c.fail("measurement shape", f"A(x) has shape {tuple(y.shape)} for a batch of {batch}; "
                   "the leading dim must be the batch")
        if y.dtype != dtype or y.device.type != device.type:
            c.fail("measurement shape", f"A(x) is {y.dtype} on {y.device} for inputs of {dtype} on {device}; "
                   "compute in the input's dtype, on its device")
        done.append("measurement shape")
        with c.check("deterministic A"):
            again = work.A(x)
        c.close("deterministic A", again, y, rtol, atol, "A(x) differs between two calls (put randomness "
                "in the noise model)")
        done.append("deterministic A")
        with c.check("batch == per-sample"):
            each = torch.cat([alone[i].A(x[i : i + 1]) for i in range(batch)])
        c.close("batch == per-sample", y, each, rtol, atol, "A(batch) != A of each sample alone")
        done.append("batch == per-sample")

        # -- noise -------------------------------------------------------------
        with c.check("noise"):
            noisy = work(x, generator(1))
            noisy_again = work(x, generator(1))
            by_parts = work.noise(work.A(x), generator(1))
        if not torch.is_tensor(noisy) or noisy.shape != y.shape or noisy.dtype != y.dtype:
            c.fail("noise", f"op(x) is {tuple(getattr(noisy, 'shape', ()))} {getattr(noisy, 'dtype', None)} "
                   f"but A(x) is {tuple(y.shape)} {y.dtype}; noise must keep the measurement's shape and dtype")
        if not torch.equal(noisy, noisy_again):
            c.fail("noise", "two observations made with generators seeded alike differ; draw all noise "
                   "from the generator argument")
        if not torch.equal(noisy, by_parts):
            c.fail("noise", "op(x, generator) != op.noise(op.A(x), generator); forward must be noise(A(x))")
        done.append("noise")

        # -- observation, measurement error, superimposition ---------------------
        with c.check("check_observation"):
            if observation is None:
                obs = work(x2, generator(2))
            else:
                obs = observation.to(device)
                obs = obs.to(dtype) if obs.is_floating_point() else obs
            work.check_observation(obs, x)
        done.append("check_observation")
        with c.check("measurement_error"):
            err = work.measurement_error(y, obs)
        if not torch.is_tensor(err) or not err.is_floating_point() or tuple(err.shape) != (batch,):
            c.fail("measurement_error", f"must be a float tensor [B] = [{batch}]; got "
                   f"{tuple(getattr(err, 'shape', ()))} {getattr(err, 'dtype', type(err).__name__)}")
        if not torch.isfinite(err).all():
            c.fail("measurement_error", f"is not finite: {err.tolist()}")
        with c.check("batch == per-sample"):
            err_each = torch.cat([alone[i].measurement_error(y[i : i + 1], obs[i : i + 1]) for i in range(batch)])
        c.close("batch == per-sample", err, err_each, rtol, atol,
                "measurement_error of the batch != that of each sample alone")
        done.append("measurement_error")
        with c.check("superimpose"):
            sup = work.superimpose(x, obs)
        if sup is not None and (not torch.is_tensor(sup) or sup.shape != x.shape):
            c.fail("superimpose", f"must return None or an image of shape {tuple(x.shape)}; got "
                   f"{tuple(getattr(sup, 'shape', ())) or type(sup).__name__}")
        done.append("superimpose")

        # -- linear operators: linearity, adjoint ----------------------------------
        if is_linear:
            a, b = 0.75, -1.25
            with c.check("linearity"):
                mixed = work.A(a * x + b * x2)
                separate = a * y + b * work.A(x2)
            c.close("linearity", mixed, separate, rtol, atol, "A(a x + b x') != a A(x) + b A(x')")
            done.append("linearity")
            v = _normal(tuple(y.shape), seed + 3, dtype, device)
            with c.check("adjoint shape"):
                aty = work.A_adjoint(v)
            if not torch.is_tensor(aty) or aty.shape != x.shape or aty.dtype != dtype:
                c.fail("adjoint shape", f"A_adjoint(y) is {tuple(getattr(aty, 'shape', ()))} "
                       f"{getattr(aty, 'dtype', None)}; it must map measurements back to {tuple(x.shape)} {dtype}")
            with c.check("batch == per-sample"):
                aty_each = torch.cat([alone[i].A_adjoint(v[i : i + 1]) for i in range(batch)])
            c.close("batch == per-sample", aty, aty_each, rtol, atol,
                    "A_adjoint(batch) != A_adjoint of each sample alone")
            done.append("adjoint shape")
            with c.check("adjointness"):
                rel = float(work.adjointness_test((batch, *shape), torch.Generator().manual_seed(seed + 4),
                                                  dtype=dtype, device=device))
            if not rel <= adjoint_tol:
                c.fail("adjointness", f"|<A x, y> - <x, A_adjoint y>| is {rel:.3g} of ||A x|| ||y|| "
                       f"(> {adjoint_tol:g}); A_adjoint is not the adjoint of A")
            done.append("adjointness")

    # -- gradients, always in float64 ---------------------------------------------
    with c.check("gradcheck"):
        work64 = work if dtype == torch.float64 else _prepared(ops, single, device, torch.float64)[0]
        x64 = x.detach().to(torch.float64).requires_grad_(True)
        torch.autograd.gradcheck(work64.A, (x64,), fast_mode=True)
        if is_linear:
            v64 = _normal(tuple(y.shape), seed + 5, torch.float64, device).requires_grad_(True)
            torch.autograd.gradcheck(work64.A_adjoint, (v64,), fast_mode=True)
    done.append("gradcheck")
    return done
