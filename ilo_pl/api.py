"""Programmatic API: solve problems without writing a config.

``result = solve(generator, operator, y, stages)``; ``result.images`` is
``[B, C, H, W]`` in ``[-1, 1]``. :func:`solve` has a runnable example.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from ilo_pl.callbacks.writer import ResultCollector
from ilo_pl.data import ProblemBatches
from ilo_pl.losses.base import LossTerm
from ilo_pl.modules.generators.base import SplitGenerator
from ilo_pl.modules.ilo import ILOModule
from ilo_pl.operators.base import Operator, as_operator
from ilo_pl.problem import ProblemBatch, ProblemResult, check_problem_ids
from ilo_pl.stages import Stage
from ilo_pl.trainer import default_trainer_kwargs, quiet_lightning

__all__ = ["default_trainer_kwargs", "solve"]


def solve(
    generator: SplitGenerator,
    operator: Operator,
    observation: Tensor,
    stages: Sequence[Stage],
    losses: Optional[Dict[str, LossTerm]] = None,
    loss_weights: Optional[Dict[str, float]] = None,
    target: Optional[Tensor] = None,
    seeds: Optional[Sequence[int]] = None,
    ids: Optional[Sequence[str]] = None,
    labels: Optional[Sequence[int]] = None,
    trainer_kwargs: Optional[Dict[str, Any]] = None,
    callbacks: Optional[List[pl.Callback]] = None,
    **module_kwargs: Any,
) -> ProblemResult:
    """Solve one batch of problems ``y = A(x)`` with ILO and return the result.

    Args:
        generator: a :class:`SplitGenerator`.
        operator: a batched operator (or any callable, wrapped as one).
        observation: ``y`` ``[B, ...]``.
        stages: the stage schedule.
        losses: named loss terms (default MSE).
        loss_weights: weights per loss name (default ``{"mse": 1}``).
        target: ground truth ``[B, C, H, W]`` if known (for metrics).
        seeds: one seed per problem (default ``0..B-1``).
        ids: names of the problems (they name output files: distinct, no path
            separators or leading ``.``; see :func:`~ilo_pl.problem.check_problem_ids`).
        labels: one class per problem, for class-conditional generators
            (``generator.num_classes > 0``); refused by unconditional ones.
        trainer_kwargs: overrides of :func:`default_trainer_kwargs`.
        callbacks: extra callbacks.
        **module_kwargs: further :class:`ILOModule` arguments (``sna``, ``sphere``, ...).

    Raises:
        ValueError: if an id is unsafe as a file name (e.g. ``"../x"``) or repeated.

    Example:
        Box inpainting of two faces with the embedded DCGAN, 3 CSGM steps then
        2 ILO steps at split 1 (a real solve runs hundreds; ``Stage`` is
        :class:`ilo_pl.stages.Stage`):

        >>> from ilo_pl.modules.generators import DCGANGenerator
        >>> from ilo_pl.operators import BoxMask
        >>> G, op = DCGANGenerator(), BoxMask([38, 55, 14, 49]).build((3, 64, 64), seed=0)
        >>> y = op(G.render(G.init_variables(2), 0))  # two faces in the generator's range
        >>> result = solve(G, op, y, [Stage(0, 3), Stage(1, 2, radius={"state": 500.0})])
        >>> result.images.shape, bool(result.measurement_loss.isfinite().all())
        (torch.Size([2, 3, 64, 64]), True)
    """
    quiet_lightning()
    operator = as_operator(operator)
    b = observation.shape[0]
    # a conditional generator takes its default class (or says how to give one) when labels is None
    labels = generator.check_labels(None if labels is None else list(labels), b)
    with torch.no_grad():
        probe_kw = {"labels": labels[:1]} if labels else {}
        probe = generator.render(generator.init_variables(1, **probe_kw), 0)
    operator.check_observation(observation, probe.expand(b, *probe.shape[1:]).to(observation.device))
    if ids is not None:
        # Ids name output files (ResultWriter, OptimizationGIF): refuse unsafe ones before any work.
        ids = check_problem_ids(ids, "solve(ids=...)")
        if len(ids) != b:
            raise ValueError(f"solve(ids=...) needs one id per observation: got {len(ids)} ids for {b} observations")
    batch = ProblemBatch(
        ids=list(ids) if ids is not None else [f"problem_{i}" for i in range(b)],
        observation=observation,
        operator=operator,
        seeds=list(seeds) if seeds is not None else list(range(b)),
        target=target,
        indices=list(range(b)),
        labels=list(labels) if labels is not None else None,
    )
    module = ILOModule(generator, list(stages), losses=losses, loss_weights=loss_weights, **module_kwargs)
    collector = ResultCollector()
    kw = default_trainer_kwargs()
    kw.update(trainer_kwargs or {})
    kw["callbacks"] = [collector] + list(callbacks or [])
    trainer = pl.Trainer(**kw)
    home = next(iter(generator.buffers()), next(iter(generator.parameters()), None))
    try:
        trainer.fit(module, datamodule=ProblemBatches([batch]))
    finally:
        # Lightning moves the module (and so the caller's generator) to the CPU when a GPU
        # fit ends: give the generator back on the device it came on.
        if home is not None:
            generator.to(home.device)
    if not collector.results:
        raise RuntimeError("the solve ended before its last step (was max_steps or max_time set?)")
    return collector.results[-1]
