"""Stage schedules, the ILO paper's StyleGAN-2 schedule and the per-stage learning-rate curve.

:func:`paper_stages` and :data:`PAPER_RADII` live here, not beside the
network: a schedule is a list of :class:`Stage` that only reads the
generator's split points and layer count.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # only for annotations: the generators import this module
    from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator

INF = float("inf")

#: The group of state entries no stage optimises: a class-conditional generator's class labels
#: (:mod:`ilo_pl.modules.generators.base`); refused in ``free``, never freed by a pattern.
FIXED_GROUP = "condition"

logger = logging.getLogger(__name__)

#: Environment variable: a positive integer caps every :class:`Stage`'s ``steps`` (smoke runs).
MAX_STEPS_ENV = "ILO_PL_MAX_STEPS"
_cap_announced = False


def max_steps_cap() -> Optional[int]:
    """The cap on every stage's steps that ``ILO_PL_MAX_STEPS`` sets, or ``None`` (unset or empty).

    For smoke runs of whole commands and scripts as they are written (the
    README's examples run this way in the test suite): results then say
    nothing about the schedule's quality. A warning says so, once per process.

    Raises:
        ValueError: the variable is set to something other than a positive integer.
    """
    global _cap_announced
    raw = os.environ.get(MAX_STEPS_ENV, "").strip()
    if not raw:
        return None
    try:
        cap = int(raw)
    except ValueError:
        cap = 0
    if cap < 1:
        raise ValueError(f"{MAX_STEPS_ENV} must be a positive integer (or unset); got {raw!r}")
    if not _cap_announced:
        _cap_announced = True
        logger.warning("%s=%d: every stage runs at most %d steps (a smoke run, not the schedule's results)",
                       MAX_STEPS_ENV, cap, cap)
    return cap


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
            patterns (``noise_[0-4]``, fnmatch syntax). Other entries stay fixed,
            and so do class labels (group ``condition``: refused here, never matched by a pattern).
        radius: l1 radius of the ball around the stage's starting point, per
            group or entry-name pattern (first match wins, names before
            groups); entries with no radius are unconstrained.
        loss_weights: weights of the loss terms in this stage; ``None`` uses the
            module's weights. Missing names weigh 0.
        sna: Stochastic Noise Addition in this stage; ``None`` uses the module's ``sna``.

    The environment variable ``ILO_PL_MAX_STEPS=N`` caps ``steps`` at ``N``
    (:func:`max_steps_cap`; smoke runs only).

    Example:
        >>> stage = Stage(split=1, steps=100, free=["state", "noise_[0-4]"], radius={"state": 500.0})
        >>> stage.is_free("h", "state"), stage.is_free("noise_3", "noise"), stage.is_free("noise_5", "noise")
        (True, True, False)
        >>> stage.radius_of("h", "state"), stage.radius_of("noise_3", "noise")  # no radius: unconstrained
        (500.0, inf)
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
        cap = max_steps_cap()
        if cap is not None and self.steps > cap:
            self.steps = cap
        if not self.lr > 0:
            raise ValueError(f"a stage's lr must be > 0; got {self.lr}")
        for key, r in self.radius.items():
            if r is None or not r >= 0:
                raise ValueError(f"radius of {key!r} must be >= 0 (or inf); got {r}")
        if FIXED_GROUP in self.free:
            raise ValueError(
                f"a stage cannot free {FIXED_GROUP!r}: that group holds each problem's class label (entry "
                "class_label of a class-conditional generator), which is data, not a variable. Remove it from "
                "the stage's `free`; give each problem its class with data.class_labels"
            )

    def is_free(self, name: str, group: str) -> bool:
        """Whether entry ``name`` (of ``group``) is optimised in this stage (never one of the ``condition`` group)."""
        if group == FIXED_GROUP:
            return False  # class labels stay fixed, even under a pattern that matches them ("*")
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


def check_stage_names(stages: Sequence[Stage], generator: Any) -> None:
    """Refuse ``free`` and ``radius`` keys that name nothing at their stage's split.

    A key is a group name (:data:`~ilo_pl.modules.generators.base.GROUPS`) or an
    entry-name pattern that matches at least one entry of the generator's state
    at the stage's split; a misspelt key (``radius: {staet: 300}``) would
    otherwise leave its entries silently unconstrained (or fixed).

    Raises:
        ValueError: naming the stage, the key and the valid names.
    """
    from ilo_pl.modules.generators.base import GROUPS

    for i, st in enumerate(stages):
        groups = generator.groups(st.split)
        names = list(groups)
        for what, keys in (("free", st.free), ("radius", list(st.radius))):
            for key in keys:
                matched = [n for n in names if fnmatch.fnmatchcase(n, key)]
                if what == "free" and key not in GROUPS and matched and all(groups[n] == FIXED_GROUP for n in matched):
                    raise ValueError(
                        f"stage {i} (split {st.split}): `free` key {key!r} names only class labels "
                        f"({', '.join(matched)}, group {FIXED_GROUP!r}), which no stage optimises; remove it"
                    )
                if key in GROUPS or matched:
                    continue
                raise ValueError(
                    f"stage {i} (split {st.split}): `{what}` key {key!r} is neither a group "
                    f"({', '.join(GROUPS)}) nor a pattern matching an entry of the state there "
                    f"({', '.join(names)}); check its spelling"
                )


def ramp_lr(t: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """Learning-rate multiplier at stage progress ``t`` in ``[0, 1]``.

    Linear ramp-up over the first ``rampup`` fraction and cosine ramp-down
    over the last ``rampdown`` fraction (the StyleGAN-2 projector's schedule).
    """
    down = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    down = 0.5 - 0.5 * math.cos(down * math.pi)
    up = min(1.0, t / rampup) if rampup > 0 else 1.0
    return down * up


def stage_optimizer(params: Sequence[Tensor], stage: Stage, rampup: float, rampdown: float) -> Dict[str, Any]:
    """Adam over ``params`` at the stage's ``lr``, with the :func:`ramp_lr` schedule over its steps.

    Returns:
        Lightning's ``configure_optimizers`` dict (the scheduler steps every optimizer step).
    """
    opt = torch.optim.Adam(params, lr=stage.lr)
    steps = stage.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: ramp_lr(min(1.0, (i + 0.5) / steps), rampup, rampdown))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def stage_losses(stage: Stage, default: Mapping[str, float]) -> Dict[str, float]:
    """The loss weights of ``stage`` (its own, or the module default)."""
    return dict(default if stage.loss_weights is None else stage.loss_weights)


def check_stage_losses(stages: Sequence[Stage], default: Mapping[str, float], available: Sequence[str]) -> None:
    """Raise a ``ValueError`` if a stage weighs a loss term that is not among ``available``."""
    for i, st in enumerate(stages):
        unknown = set(stage_losses(st, default)) - set(available)
        if unknown:
            raise ValueError(
                f"stage {i} weighs loss terms {sorted(unknown)} that are not in `losses` "
                f"({sorted(available)}); add them to `losses` or remove the weights"
            )


# ----------------------------------------------------------------------------- the paper's schedule
#: Radii of the paper's appendix (l1 balls around each stage's start), per stage.
PAPER_RADII: Dict[str, Tuple[float, ...]] = {
    "noise": (300.0, 2000.0, 2000.0, 4000.0),
    "latent": (300.0, 500.0, 1000.0, 2000.0),
    "state": (500.0, 1000.0, 2000.0),  # stages 1.. (stage 0 has no intermediate state)
}


def paper_stages(
    generator: StyleGAN2Generator,
    steps: Sequence[int] = (300, 200, 200, 100),
    splits: Optional[Sequence[int]] = None,
    radii: Optional[Mapping[str, Sequence[float]]] = None,
    lr: float = 0.1,
    first_noises: int = 5,
    noises_per_stage: int = 2,
) -> List[Stage]:
    """The ILO paper's StyleGAN-2 schedule as a list of :class:`~ilo_pl.stages.Stage`.

    Stage ``s`` optimises the remaining W+ rows (group ``latent``), the
    intermediate feature map ``h`` (group ``state``, stages >= 1) and the
    noises ``noise_i`` with ``split_s <= i < first_noises + noises_per_stage * s``
    (the first five noises in stage 0, two more freed per stage; only those
    the generator's state has: none for StyleGAN3), each inside
    an l1 ball around the stage's starting point, with Adam at ``lr``. The
    RGB ``skip`` (group ``skip``) is carried at its ``G1`` value and not
    optimised, as in the paper.

    Args:
        generator: the generator (for its number of layers and split points).
        steps: optimizer steps per stage.
        splits: split point of each stage; default ``(0, 1, 3, 5, ...)``: the
            input, then after each resolution block (the paper's layers).
        radii: per group (``noise``, ``latent``, ``state``) one radius per
            stage (``state``: per stage from the second on). Default: the
            paper's appendix, :data:`PAPER_RADII` (its first ``len(steps)``
            stages; more than four stages need explicit radii).
        lr: Adam's learning rate.
        first_noises: noises free in the first stage.
        noises_per_stage: noises freed in each later stage.

    Raises:
        ValueError: if ``splits`` or ``radii`` do not have one entry per stage,
            or a split is out of range or decreasing.
    """
    n = len(steps)
    if n == 0:
        raise ValueError("paper_stages needs at least one stage (steps is empty)")
    if splits is None:
        splits = [0] + [2 * s - 1 for s in range(1, n)]
    splits = [int(k) for k in splits]
    if len(splits) != n:
        raise ValueError(f"splits has {len(splits)} entries for {n} stages; give one split per stage")
    for k in splits:
        generator.check_split(k)
    if any(b < a for a, b in zip(splits, splits[1:])):
        raise ValueError(f"splits must not decrease; got {splits}")
    if radii is None:
        if n > len(PAPER_RADII["latent"]):
            raise ValueError(
                f"the paper gives radii for {len(PAPER_RADII['latent'])} stages, not {n}; pass `radii` "
                "(noise and latent: one per stage, state: one per stage after the first)"
            )
        # The paper's radii of its first n stages.
        radii = {g: v[: n - 1 if g == "state" else n] for g, v in PAPER_RADII.items()}
    radii = dict(radii)
    for group, want in (("noise", n), ("latent", n), ("state", n - 1)):
        values = radii.get(group)
        if values is None:
            raise ValueError(f"radii lacks group {group!r}; give {want} values (inf for no constraint)")
        if len(values) != want:
            raise ValueError(
                f"radii[{group!r}] has {len(values)} values for {n} stages; give {want}"
                + (" (one per stage after the first)" if group == "state" else "")
                + " or pass your own radii"
            )
    stages = []
    for s, (k, n_steps) in enumerate(zip(splits, steps)):
        last = min(first_noises + noises_per_stage * s, int(getattr(generator, "num_layers", 0)))
        # Only noises the state has (none for StyleGAN3 or noise_mode "none": latents and state only).
        names = set(generator.groups(k))
        free = ["latent"] + (["state"] if k > 0 else []) + [f"noise_{i}" for i in range(k, last) if f"noise_{i}" in names]
        radius = {"latent": float(radii["latent"][s]), "noise": float(radii["noise"][s])}
        if s > 0:
            radius["state"] = float(radii["state"][s - 1])
        stages.append(Stage(split=k, steps=int(n_steps), lr=lr, free=free, radius=radius))
    return stages
