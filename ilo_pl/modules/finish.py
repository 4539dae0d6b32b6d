"""A problem batch's way in and out of :class:`~ilo_pl.modules.ilo.ILOModule`: restarts and the consistency step.

* :func:`prepare`: each problem batch as it reaches the module's device:
  refuse a consistency step its operator cannot take (before any step), and
  expand it to the module's restarts (:mod:`ilo_pl.modules.restarts`).
* :func:`check_setup`: the same refusal when the fit starts (the module's
  ``setup``), from the data module's operator, before any problem is loaded.
* :func:`finish`: the result of a solved batch: each problem's best restart
  (:func:`~ilo_pl.modules.restarts.collapse`), or the mean of its best
  ``restart_average`` (:func:`~ilo_pl.modules.restarts.average_restarts`),
  then the consistency step (:mod:`ilo_pl.operators.consistency`) on those images.

The consistency step changes the returned image: ``images`` is ``clamp(G +
correction, -1, 1)`` (the image the PNG shows and the metrics score),
``measurement_loss`` is that image's error, and each solution carries
``consistency`` and ``correction`` (with the mean over restarts, if any, in the
same correction) so that the saved image is regenerated with
the step included (:func:`ilo_pl.solutions.regenerate`, which clamps alike).
Each stage's errors (``stage_losses``) stay the generator's. ``project`` on a
noisy operator is warned about once, at the fit's start (or with the first
batch), naming ``prox``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional, Tuple

import torch

from ilo_pl.modules.restarts import average_restarts, check_average, check_restarts, collapse, expand, keep_best_
from ilo_pl.operators.base import Operator
from ilo_pl.operators.consistency import (
    RESIDUAL_WARNING,
    check_mode,
    check_operator,
    consistency_step,
    project_noise_warning,
)
from ilo_pl.problem import ProblemBatch, ProblemResult

__all__ = [
    "RESIDUAL_WARNING",
    "apply_consistency",
    "check_options",
    "check_setup",
    "finish",
    "keep_best_",
    "prepare",
    "probe_operator",
    "warn_noisy_project",
]

#: (RESIDUAL_WARNING, the consistency step's residual above which a problem is warned about, lives in
#: ilo_pl.operators.consistency, which warns; imported here for code that read it from this module.)


def check_options(
    restarts: Any, restart_keep: Any, consistency: Any, num_stages: Optional[int] = None, restart_average: Any = 1
) -> Tuple[int, Optional[int], int, str]:
    """The module's ``restarts``, ``restart_keep``, ``restart_average`` and ``consistency``, checked
    (errors name the fix).

    ``restart_keep`` comes back ``None`` where it prunes nothing (see
    :func:`~ilo_pl.modules.restarts.check_restarts`; ``num_stages``: the schedule's length).
    """
    restarts, restart_keep = check_restarts(restarts, restart_keep, num_stages)
    return restarts, restart_keep, check_average(restart_average, restarts, restart_keep), check_mode(consistency)


def prepare(module: Any, batch: ProblemBatch) -> ProblemBatch:
    """The batch the module solves: ``batch`` checked for the consistency step and expanded to the restarts."""
    check_operator(batch.operator, module.consistency)
    warn_noisy_project(module, batch.operator)
    return expand(batch, module.restarts)


def warn_noisy_project(module: Any, op: Operator) -> None:
    """Warn, once per module, that ``project`` on a noisy ``op`` explains the noise too (names ``prox``)."""
    message = project_noise_warning(op, module.consistency)
    if message is None or getattr(module, "_noisy_project_warned", False):
        return
    module._noisy_project_warned = True
    warnings.warn(message, stacklevel=3)


def probe_operator(datamodule: Any) -> Optional[Operator]:
    """An operator of the kind ``datamodule`` will give (``None`` when it cannot tell without loading data).

    :class:`~ilo_pl.data.ProblemBatches` holds its batches; an
    :class:`~ilo_pl.data.InverseProblemDataModule` builds one with its spec for
    its first problem (a spec that cannot build it here is checked with the first batch instead).
    """
    batches = getattr(datamodule, "batches", None)
    if batches:
        return getattr(batches[0], "operator", None)
    spec, shape = getattr(datamodule, "operator_spec", None), getattr(datamodule, "image_shape", None)
    if spec is None or shape is None:
        return None
    source = getattr(datamodule, "source", None)
    try:
        name = source.name(0) if source is not None and len(source) else None
        return spec.build(tuple(shape), 0, name=name)
    except Exception:  # noqa: BLE001 - the data module raises its own error for the problem it cannot build
        return None


def check_setup(module: Any) -> None:
    """At the fit's start: refuse a consistency step the data's operator cannot take (names the fix)."""
    if module.consistency == "none":
        return
    trainer = getattr(module, "_trainer", None)
    op = probe_operator(getattr(trainer, "datamodule", None)) if trainer is not None else None
    if op is not None:
        check_operator(op, module.consistency)
        warn_noisy_project(module, op)


@torch.no_grad()
def apply_consistency(result: ProblemResult, mode: str, renders: Optional[torch.Tensor] = None) -> ProblemResult:
    """``result`` with the consistency step ``mode`` applied to its images (see the module doc).

    ``renders``: the generator's renderings of the solutions when some of
    ``result``'s images already carry a correction (a mean over restarts):
    the step acts on rendering + correction (unclamped: a generator whose
    images leave [-1, 1] would otherwise get a step for another image), its
    change is added to that correction, and the image is computed from the
    rendering and the whole correction, as regenerate does.
    """
    if mode == "none":
        return result
    batch = result.batch
    op, y = batch.operator, batch.observation
    base = result.images
    earlier = None
    if renders is not None:
        base = renders.float().cpu()
        earlier = torch.cat([s.correction.float().cpu() if s.correction is not None else torch.zeros_like(base[:1])
                             for s in result.solutions])
    start = base if earlier is None else base + earlier
    # (consistency_step warns, once per kind, naming the problems: approximate solves, prox leaving G.)
    step = consistency_step(op, start.to(y.device), y, mode, ids=list(batch.ids))
    correction = step.correction.float().cpu()
    if earlier is not None:
        correction = earlier + correction
    # Added on the CPU in float32 and clamped to the image range, as regenerate does to a float32 CPU
    # rendering (the same bits): the image returned, saved, scored and regenerated is one and the same.
    images = (base + correction).clamp(-1.0, 1.0)
    err = op.measurement_error(op.A(images.to(y.device)), y).float().cpu()
    solutions = [
        dataclasses.replace(s, consistency=mode, correction=correction[b : b + 1].clone())
        for b, s in enumerate(result.solutions)
    ]
    return dataclasses.replace(result, images=images, measurement_loss=err, solutions=solutions)


def finish(module: Any, result: ProblemResult) -> ProblemResult:
    """The module's result for a solved batch: the best restart per problem (or the mean of its
    ``restart_average`` best), then the consistency step."""
    chosen = collapse(result)
    averaged = average_restarts(result, chosen, getattr(module, "restart_average", 1))
    renders = chosen.images if averaged is not chosen else None
    return apply_consistency(averaged, module.consistency, renders)
