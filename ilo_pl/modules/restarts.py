"""Random restarts: several initial latents per problem, solved in one batch; the best by measurement loss wins.

With ``restarts: R`` each problem of a batch becomes ``R`` rows of a larger
batch (:class:`RestartBatch`, problem-major: problem 0's restarts ``0..R-1``,
then problem 1's, ...). Row ``(p, r)`` starts from the seed
:func:`restart_seed` ``(seed_p, r)`` (restart 0 is the problem's own seed: the
start ``restarts: 1`` uses), carries problem ``p``'s observation and operator
parameters, and is solved as a problem of its own: the loss is a sum over
rows and each row's step, SNA noise stream and failure handling are its own.
So a problem's restarts, and the one that wins, do not depend on its
batch-mates or on the batch size. The generator runs ``R`` times as many rows
per step: restarts cost compute (or steps, at equal compute).

``restart_keep: K`` prunes after the first stage (CSGM at split 0 in the
paper's schedule): each problem keeps its ``K`` rows with the lowest
measurement error of their kept iterate (ties: the lower restart index), and
the later stages run on ``B * K`` rows (:func:`keep_best_`). ``K = R`` is the
same as leaving it unset; with a one-stage schedule it has no effect (a
warning says so) and is treated as unset too.

At the end :func:`collapse` picks, per problem, the restart whose result has
the lowest measurement error: the noiseless ``A`` of its returned iterate
against the observation (what ``results.csv`` reports as
``measurement_loss``), never the ground truth. Both choices put restarts
that failed (a non-finite loss or gradient: such a row stops at its last
finite iterate, :mod:`~ilo_pl.modules.tracking`) after every healthy one,
so a problem is reported failed only when all its (kept) restarts failed.
The solution records its restart index (``results.csv``'s ``restart``
column, the solution file's ``restart``); its state is that restart's, so
regenerating it renders the chosen image.

``restart_average: K`` returns instead, per problem, the pixel mean of its
``K`` best restarts' images (same ranking; restarts that failed are left out
unless all did): :func:`average_restarts`. The mean's squared error is at
most the average of its members' (convexity), and below the best one's
where their errors are partly independent (measured in the quality
benchmark, not guaranteed); the price is sharpness, and the image is not in
the generator's range. The solution keeps the
best restart's state and the mean as a correction on top of its rendering
(``averaged`` lists the restarts, ``results.csv``'s ``averaged`` column too),
so regenerating it renders the mean.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ilo_pl.modules.generators.range import FeasibleSet
from ilo_pl.operators.base import Operator
from ilo_pl.problem import ProblemBatch, ProblemResult

_MASK64 = 2**64 - 1


def restart_seed(seed: int, restart: int) -> int:
    """The seed of restart ``restart`` of a problem seeded ``seed`` (restart 0: ``seed`` itself).

    Other restarts hash ``(seed, restart)`` (splitmix64's finaliser): problem
    seeds are consecutive integers (:func:`ilo_pl.data.problem_seed`), so
    ``seed + restart`` would be a neighbouring problem's start.
    """
    if int(restart) == 0:
        return int(seed)
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(restart) * 0xD1B54A32D192ED03 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) % 2**62


def check_restarts(restarts: Any, keep: Any, num_stages: Optional[int] = None) -> Tuple[int, Optional[int]]:
    """Validate ``restarts`` and ``restart_keep``; returns them as ``(int, int or None)``.

    A ``restart_keep`` that prunes nothing is returned as ``None`` (unset), so
    that it is not recorded as a setting of its own (a run folder solved
    without it resumes): ``restart_keep == restarts``, or a schedule of
    ``num_stages == 1`` (nothing runs after the first stage; warned about).

    Raises:
        ValueError: naming the value and the fix, for ``restarts < 1``,
            ``restart_keep < 1`` or ``restart_keep > restarts`` (or non-integers).
    """
    if isinstance(restarts, bool) or not isinstance(restarts, numbers.Integral) or restarts < 1:
        raise ValueError(
            f"restarts must be an integer >= 1 (initial latents per problem; 1, the default, is a single "
            f"start); got {restarts!r}"
        )
    if keep is None:
        return int(restarts), None
    if isinstance(keep, bool) or not isinstance(keep, numbers.Integral) or keep < 1:
        raise ValueError(
            f"restart_keep must be an integer >= 1 (restarts per problem kept after the first stage), or "
            f"unset to keep them all; got {keep!r}"
        )
    if keep > restarts:
        raise ValueError(
            f"restart_keep={keep} is more than restarts={restarts}: a problem cannot keep more restarts than "
            f"it starts. Set restart_keep <= {restarts}, or leave it unset to run every restart through all stages"
        )
    if keep == restarts:
        return int(restarts), None  # keeps every restart: the same solve as without restart_keep
    if num_stages == 1:
        warnings.warn(
            f"restart_keep={keep} has no effect: restarts are pruned after the first stage, and this schedule "
            f"has only one, so all {restarts} restarts run the whole solve. Leave restart_keep unset, or add "
            "stages (it prunes before the second)",
            UserWarning,
            stacklevel=4,  # the caller of ILOModule(...)
        )
        return int(restarts), None
    return int(restarts), int(keep)


def check_average(average: Any, restarts: int, keep: Optional[int]) -> int:
    """Validate ``restart_average`` against (validated) ``restarts`` and ``restart_keep``.

    Raises:
        ValueError: naming the value and the fix, for a non-integer or ``< 1``, more than
            ``restarts``, or more than a ``restart_keep`` (only kept restarts reach the end).
    """
    if isinstance(average, bool) or not isinstance(average, numbers.Integral) or average < 1:
        raise ValueError(
            f"restart_average must be an integer >= 1 (the number of each problem's best restarts whose mean "
            f"is returned; 1, the default, returns the best one); got {average!r}"
        )
    if average > restarts:
        raise ValueError(
            f"restart_average={average} is more than restarts={restarts}: a problem cannot average more restarts "
            f"than it starts. Set restarts >= {average}, or restart_average <= {restarts}"
        )
    if keep is not None and average > keep:
        raise ValueError(
            f"restart_average={average} is more than restart_keep={keep}: only the kept restarts run to the end. "
            f"Set restart_keep >= {average} (or leave it unset), or restart_average <= {keep}"
        )
    return int(average)


@dataclass
class RestartBatch(ProblemBatch):
    """A problem batch expanded to several restarts per problem: the rows the module solves.

    Its per-problem fields (observation, operator buffers, target, ...) hold
    one row per restart; ``seeds`` are the restarts' seeds and ``ids`` internal
    row names. It has its parent's :attr:`key` (the same solve).

    Attributes:
        parent: the problem batch it expands (what results are reported for).
        problem: each row's problem (its index in ``parent``).
        restart: each row's restart index.
    """

    parent: Optional[ProblemBatch] = None
    problem: List[int] = field(default_factory=list)
    restart: List[int] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return self.parent.key

    def to(self, device: torch.device) -> "RestartBatch":
        """A copy on ``device``, its parent moved too (rows, problems and restarts kept)."""
        moved = super().to(device)
        if self.parent is not None:
            moved.parent = self.parent.to(device)
        return moved


def select_operator_rows(op: nn.Module, index: Tensor, size: int) -> nn.Module:
    """A shallow copy of ``op`` whose per-problem buffers hold the rows ``index`` of a batch of ``size``.

    Per-problem buffers are an operator's :attr:`~ilo_pl.operators.base.Operator.batched_buffers`
    with ``size`` rows (the :meth:`~ilo_pl.operators.base.Operator.stack` contract);
    shared ones (one row) broadcast and are kept, and so is everything else
    (noise models, classifiers: shared, never copied). Parts of a composition
    are selected the same way.
    """
    out = copy.copy(op)
    out._buffers = dict(op._buffers)  # own registries: op itself stays as it is
    out._modules = dict(op._modules)
    if isinstance(op, Operator) and size > 1:
        for name in op.batched_buffers:
            buf = op._buffers.get(name)
            if buf is not None and buf.dim() > 0 and buf.shape[0] == size:
                out._buffers[name] = buf.index_select(0, index.to(buf.device))
    for name, child in op._modules.items():
        if child is not None and any(isinstance(m, Operator) for m in child.modules()):
            out._modules[name] = select_operator_rows(child, index, size)
    return out


def _select(batch: ProblemBatch, rows: Sequence[int]) -> Dict[str, Any]:
    """The per-problem fields of ``batch`` at ``rows`` (tensors and lists with one entry per problem)."""
    size = len(batch)
    index = torch.tensor(list(rows), dtype=torch.long)
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(ProblemBatch):
        if not f.init:
            continue
        value = getattr(batch, f.name)
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size:
            value = value.index_select(0, index.to(value.device))
        elif isinstance(value, list) and len(value) == size:
            value = [value[i] for i in rows]
        out[f.name] = value
    out["operator"] = select_operator_rows(batch.operator, index, size)
    return out


def _rows_batch(parent: ProblemBatch, values: Dict[str, Any], problem: List[int], restart: List[int]) -> RestartBatch:
    values["ids"] = [f"p{p}r{r}" for p, r in zip(problem, restart)]  # internal row names (distinct)
    values["seeds"] = [restart_seed(parent.seeds[p], r) for p, r in zip(problem, restart)]
    return RestartBatch(**values, parent=parent, problem=problem, restart=restart)


def expand(batch: ProblemBatch, restarts: int) -> ProblemBatch:
    """``batch`` with ``restarts`` rows per problem (a :class:`RestartBatch`); ``batch`` itself for 1."""
    if restarts == 1 or isinstance(batch, RestartBatch):
        return batch
    problem = [p for p in range(len(batch)) for _ in range(restarts)]
    restart = [r for _ in range(len(batch)) for r in range(restarts)]
    return _rows_batch(batch, _select(batch, problem), problem, restart)


def take_rows_(batch: RestartBatch, rows: Sequence[int]) -> None:
    """Keep only ``rows`` of ``batch``, in place (the trainer holds this object for the current step)."""
    rows = list(rows)
    values = _select(batch, rows)
    problem = [batch.problem[i] for i in rows]
    restart = [batch.restart[i] for i in rows]
    new = _rows_batch(batch.parent, values, problem, restart)
    for f in dataclasses.fields(new):
        setattr(batch, f.name, getattr(new, f.name))


def _ranked(batch: RestartBatch, loss: Sequence[float], failed: Sequence[bool]) -> Dict[int, List[int]]:
    """Each problem's rows, best first: rows that did not fail, then the lowest finite loss, then the lower restart.

    A failed row (a non-finite loss or gradient) keeps its last finite iterate,
    which may fit well, but it stopped there (its gradients are zeroed for the
    rest of the solve): it ranks after every healthy row of its problem.
    """
    out: Dict[int, List[int]] = {}
    for i, p in enumerate(batch.problem):
        out.setdefault(p, []).append(i)
    score = [v if math.isfinite(v) else math.inf for v in loss]
    return {p: sorted(rows, key=lambda i: (bool(failed[i]), score[i], batch.restart[i])) for p, rows in out.items()}


@torch.no_grad()
def keep_best_(module: Any, batch: ProblemBatch, keep: Optional[int]) -> None:
    """After the first stage: keep each problem's ``keep`` best restarts (by that stage's measurement error).

    Prunes in place the batch's rows and everything the module keeps per row:
    the tracker's records (:meth:`~ilo_pl.modules.tracking.BestIterate.take_rows_`,
    with their feasible sets), the float16 overflow streaks and the SNA noise
    streams (each row keeps its own stream, where it was). A no-op without
    restarts or without ``keep``.
    """
    if keep is None or not isinstance(batch, RestartBatch):
        return
    tracker = module.tracker
    # One host read per problem batch: the first stage's errors and which rows failed.
    loss, failed = torch.stack([tracker.records[0]["loss"].float(), tracker.failed.float()]).cpu().tolist()
    ranked = _ranked(batch, loss, [f > 0 for f in failed])
    rows = sorted(i for best in ranked.values() for i in best[:keep])  # problem-major, restart order
    if len(rows) == len(batch):
        return
    index = torch.tensor(rows, dtype=torch.long, device=tracker.device)
    take_rows_(batch, rows)
    tracker.take_rows_(index)
    for rec in tracker.records:
        fs = rec["extra"].get("feasible")
        if isinstance(fs, FeasibleSet):
            balls = {k: (a.index_select(0, index.to(a.device)), r) for k, (a, r) in fs.balls.items()}
            rec["extra"]["feasible"] = dataclasses.replace(fs, balls=balls)
    if module.overflow is not None:
        module.overflow.streak = module.overflow.streak.index_select(0, index.to(module.overflow.streak.device))
    module.noise_draws.generators = [module.noise_draws.generators[i] for i in rows]


def _members(result: ProblemResult, average: int) -> Dict[int, List[int]]:
    """Each problem's rows to average, best first: its ``average`` best (failed rows only if all failed)."""
    batch = result.batch
    failed = [f is not None for f in result.failed]
    ranked = _ranked(batch, result.measurement_loss.float().tolist(), failed)
    out = {}
    for p, rows in ranked.items():
        healthy = [i for i in rows[:average] if not failed[i]]
        out[p] = healthy or rows[:1]
    return out


@torch.no_grad()
def average_restarts(result: ProblemResult, chosen: ProblemResult, average: int) -> ProblemResult:
    """``chosen`` (:func:`collapse` of ``result``) with each image the mean of its problem's ``average`` best restarts.

    The mean is kept as each solution's ``correction`` on top of the best
    restart's rendering (``images = clamp(rendering + correction, -1, 1)``,
    computed as :func:`ilo_pl.solutions.regenerate` does, so the returned,
    saved and regenerated images are the same bits), its ``averaged`` lists
    the restarts, and ``measurement_loss`` is the mean's error. ``chosen`` as
    it is for ``average == 1`` or a result without restarts; a problem left
    with one member (the others failed) keeps its best restart's own image.
    """
    batch = result.batch
    if average <= 1 or not isinstance(batch, RestartBatch):
        return chosen
    members = _members(result, average)
    images = result.images.float().cpu()
    base = chosen.images.float().cpu()
    out = base.clone()
    solutions = list(chosen.solutions)
    for p, rows in members.items():
        if len(rows) < 2:
            continue
        correction = images[rows].mean(0, keepdim=True) - base[p : p + 1]
        out[p] = (base[p : p + 1] + correction).clamp(-1.0, 1.0)[0]  # as regenerate computes it
        solutions[p] = dataclasses.replace(solutions[p], correction=correction,
                                           averaged=tuple(batch.restart[i] for i in rows))
    parent = batch.parent
    op, y = parent.operator, parent.observation
    err = op.measurement_error(op.A(out.to(y.device)), y).float().cpu()
    return dataclasses.replace(chosen, images=out, measurement_loss=err, solutions=solutions)


def collapse(result: ProblemResult) -> ProblemResult:
    """The result for the original problems: each problem's restart with the lowest measurement error.

    ``result`` solved a :class:`RestartBatch`; any other result is returned
    as it is. Restarts that failed rank after those that did not (so a problem
    is reported failed only when every restart it kept failed), non-finite
    errors last; ties go to the lower restart index.
    """
    batch = result.batch
    if not isinstance(batch, RestartBatch):
        return result
    ranked = _ranked(batch, result.measurement_loss.float().tolist(), [f is not None for f in result.failed])
    chosen = [ranked[p][0] for p in range(len(batch.parent))]
    idx = torch.tensor(chosen, dtype=torch.long)
    start = result.start
    if start is not None:
        start = dataclasses.replace(start, state={k: v.index_select(0, idx.to(v.device)) for k, v in start.state.items()})
    return dataclasses.replace(
        result,
        batch=batch.parent,
        images=result.images.index_select(0, idx.to(result.images.device)),
        measurement_loss=result.measurement_loss.index_select(0, idx.to(result.measurement_loss.device)),
        solutions=[dataclasses.replace(result.solutions[i], restart=batch.restart[i]) for i in chosen],
        stage_losses=[s.index_select(0, idx.to(s.device)) for s in result.stage_losses],
        failed=[result.failed[i] for i in chosen],
        start=start,
    )
