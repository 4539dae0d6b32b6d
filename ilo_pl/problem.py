"""The unit of work: a batch of inverse problems and the result of solving it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor

from ilo_pl.operators.base import Operator


@dataclass
class ProblemBatch:
    """``B`` independent problems solved together.

    Attributes:
        ids: one name per problem (used for output file names).
        observation: ``y`` ``[B, ...]``.
        operator: the batched operator (per-sample buffers stacked on dim 0).
        seeds: one seed per problem; it seeds that problem's initial variables,
            so a problem's result does not depend on its batch-mates.
        target: the ground-truth image ``[B, C, H, W]`` in ``[-1, 1]`` when known.
        indices: the problems' indices in the data set (for sharding/resume).
    """

    ids: List[str]
    observation: Tensor
    operator: Operator
    seeds: List[int]
    target: Optional[Tensor] = None
    indices: List[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        b = len(self.ids)
        if self.observation.shape[0] != b or len(self.seeds) != b:
            raise ValueError(
                f"a ProblemBatch of {b} ids needs {b} observations and seeds; got "
                f"{self.observation.shape[0]} observations and {len(self.seeds)} seeds"
            )
        if self.target is not None and self.target.shape[0] != b:
            raise ValueError(f"target has {self.target.shape[0]} images for {b} problems")

    @property
    def key(self) -> tuple:
        """Identity of the problem batch (a new key starts a new solve)."""
        return tuple(self.ids) + tuple(self.seeds)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> "ProblemBatch":
        """A copy on ``device`` (the operator module is moved in place)."""
        return ProblemBatch(
            ids=self.ids,
            observation=self.observation.to(device),
            operator=self.operator.to(device),
            seeds=self.seeds,
            target=None if self.target is None else self.target.to(device),
            indices=self.indices,
        )


@dataclass
class Solution:
    """The saved variables of one problem: enough to regenerate its reconstruction.

    Attributes:
        split: the split point of ``state``.
        stage: index of the stage the best iterate came from.
        state: the full state at ``split`` (one sample, batch dim 1).
    """

    split: int
    stage: int
    state: Dict[str, Tensor]


@dataclass
class ProblemResult:
    """What solving one problem batch produced.

    Attributes:
        batch: the problem batch.
        images: the best iterate per sample ``[B, C, H, W]`` in ``[-1, 1]``.
        measurement_loss: its measurement error per sample ``[B]``.
        solutions: per sample, the variables that regenerate ``images[b]``.
        stage_losses: per stage, the best measurement error per sample.
        failed: per sample, ``None`` or the reason the solve failed (NaN/inf).
    """

    batch: ProblemBatch
    images: Tensor
    measurement_loss: Tensor
    solutions: List[Solution]
    stage_losses: List[Tensor]
    failed: List[Optional[str]]
