"""Stage schedules and the per-stage learning-rate curve."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

INF = float("inf")


@dataclass
class Stage:
    """One ILO stage: which split is optimised, for how long, and under which constraints.

    Attributes:
        split: the split point whose state is the variable (0 = CSGM on the input).
        steps: optimizer steps in this stage.
        lr: Adam's peak learning rate.
        free: state entries optimised in this stage, as group names (``state``,
            ``latent``, ``noise``, ``skip``; see
            :data:`ilo_pl.modules.generators.base.GROUPS`) or entry-name
            patterns (``noise_[0-4]``, fnmatch syntax). Other entries stay fixed.
        radius: l1 radius of the ball around the stage's starting point, per
            group or entry-name pattern (first match wins, names before
            groups); entries with no radius are unconstrained.
        loss_weights: weights of the loss terms in this stage; ``None`` uses the
            module's weights. Missing names weigh 0.
        sna: Stochastic Noise Addition in this stage; ``None`` uses the module's ``sna``.
    """

    split: int
    steps: int
    lr: float = 0.1
    free: List[str] = field(default_factory=lambda: ["state", "latent", "noise"])
    radius: Dict[str, float] = field(default_factory=dict)
    loss_weights: Optional[Dict[str, float]] = None
    sna: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"a stage needs at least one step; got steps={self.steps}")
        if not self.lr > 0:
            raise ValueError(f"a stage's lr must be > 0; got {self.lr}")
        for key, r in self.radius.items():
            if r is None or not r >= 0:
                raise ValueError(f"radius of {key!r} must be >= 0 (or inf); got {r}")

    def is_free(self, name: str, group: str) -> bool:
        """Whether entry ``name`` (of ``group``) is optimised in this stage."""
        return any(p == group or fnmatch.fnmatchcase(name, p) for p in self.free)

    def radius_of(self, name: str, group: str) -> float:
        """The l1 radius for entry ``name`` (inf if none is given).

        Keys that are group names (:data:`~ilo_pl.modules.generators.base.GROUPS`)
        apply to the group; any other key is an entry-name pattern, and a
        matching pattern wins over the group's radius.
        """
        # Imported here: ilo_pl.modules imports this module (the engine reads Stage).
        from ilo_pl.modules.generators.base import GROUPS

        for pattern, r in self.radius.items():
            if pattern not in GROUPS and fnmatch.fnmatchcase(name, pattern):
                return float(r)
        return float(self.radius.get(group, INF))


def check_stages(stages: List[Stage], num_splits: int) -> None:
    """Validate a schedule against a generator's split points.

    Raises:
        ValueError: on an empty schedule, a split out of range, or splits that go backwards.
    """
    if not stages:
        raise ValueError("the stage schedule is empty; give at least one stage")
    prev = -1
    for i, s in enumerate(stages):
        if not 0 <= s.split <= num_splits:
            raise ValueError(
                f"stage {i} uses split {s.split}, but the generator has split points 0..{num_splits}"
            )
        if s.split < prev:
            raise ValueError(
                f"stage {i} goes back from split {prev} to {s.split}; splits must not decrease"
            )
        prev = s.split


def ramp_lr(t: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """Learning-rate multiplier at stage progress ``t`` in ``[0, 1]``.

    Linear ramp-up over the first ``rampup`` fraction and cosine ramp-down
    over the last ``rampdown`` fraction (the StyleGAN-2 projector's schedule).
    """
    down = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    down = 0.5 - 0.5 * math.cos(down * math.pi)
    up = min(1.0, t / rampup) if rampup > 0 else 1.0
    return down * up


def stage_losses(stage: Stage, default: Mapping[str, float]) -> Dict[str, float]:
    """The loss weights of ``stage`` (its own, or the module default)."""
    return dict(default if stage.loss_weights is None else stage.loss_weights)
