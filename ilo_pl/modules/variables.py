"""A stage's variables: which state entries are free, their constraints, and the fixed rest.

:func:`initial_state` draws each problem's starting state from its seed;
:func:`stage_variables` turns the state at a stage's split into the
stage's optimisation variables (``nn.Parameter``, float32, on the module's
device), the entries it keeps fixed, and the constraints the projection
callbacks enforce after every step: l1 balls around each free entry's
starting value and, optionally, spheres. :func:`project_stage_to_range`
hands a stage's solution on through the range of the earlier layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ilo_pl.modules.generators.base import SplitGenerator, State
from ilo_pl.modules.generators.range import FeasibleSet, computed_entries
from ilo_pl.modules.generators.range import project_to_range as range_projection
from ilo_pl.modules.tracking import BestIterate
from ilo_pl.problem import ProblemBatch
from ilo_pl.projections import project_sphere_
from ilo_pl.stages import Stage


@dataclass
class StageVariables:
    """The variables of one stage.

    Attributes:
        params: the free entries, as parameters (what the optimizer steps).
        fixed: the other entries of the state, detached.
        l1: ``(parameter, anchor, radius)`` per l1-constrained free entry.
        spheres: ``(parameter, dims)`` per sphere-constrained free entry.
        feasible: the same constraints by name (for :func:`~ilo_pl.modules.generators.range.project_to_range`).
    """

    params: nn.ParameterDict
    fixed: Dict[str, Tensor] = field(default_factory=dict)
    l1: List[Tuple[nn.Parameter, Tensor, float]] = field(default_factory=list)
    spheres: List[Tuple[nn.Parameter, Tuple[int, ...]]] = field(default_factory=list)
    feasible: FeasibleSet = field(default_factory=lambda: FeasibleSet([]))

    def state(self) -> Dict[str, Tensor]:
        """The full state: fixed entries and the parameters."""
        return {**self.fixed, **dict(self.params.items())}


def stage_variables(
    state: Mapping[str, Tensor],
    stage: Stage,
    groups: Mapping[str, str],
    spheres: Mapping[str, Tuple[int, ...]],
    device: torch.device,
) -> StageVariables:
    """Split ``state`` into the stage's free parameters (with their constraints) and fixed entries.

    Args:
        state: the state at ``stage.split``.
        stage: the stage (its ``free`` entries/groups and ``radius``).
        groups: the generator's group of each entry at the split.
        spheres: ``name -> dims`` of the entries to keep on their sphere.
        device: where the variables live.

    Raises:
        ValueError: if the stage frees no entry of the state.
    """
    out = StageVariables(nn.ParameterDict())
    free: List[str] = []
    for name, value in state.items():
        group = groups[name]
        value = value.detach().to(device, torch.float32)
        if not stage.is_free(name, group):
            out.fixed[name] = value
            continue
        param = nn.Parameter(value.clone())
        out.params[name] = param
        free.append(name)
        radius = stage.radius_of(name, group)
        if math.isfinite(radius):
            anchor = value.clone()
            out.l1.append((param, anchor, radius))
            out.feasible.balls[name] = (anchor, radius)
        if name in spheres:
            dims = tuple(spheres[name])
            out.spheres.append((param, dims))
            out.feasible.spheres[name] = dims
    if not free:
        raise ValueError(
            f"stage at split {stage.split} frees no variable: its `free` {stage.free} matches "
            f"none of {sorted(state)} (groups {sorted(set(groups.values()))})"
        )
    out.feasible.free = free
    return out


def initial_state(
    generator: SplitGenerator, seeds: Sequence[int], split: int, sphere: bool, device: torch.device,
    labels: Optional[Sequence[int]] = None,
) -> State:
    """The first stage's starting state: each problem's variables drawn from its own seed, at ``split``.

    Args:
        generator: the split generator.
        seeds: one seed per problem (a problem's start does not depend on its batch-mates).
        split: the first stage's split (a schedule may start deeper than the input).
        sphere: start the generator's split-0 sphere variables on their spheres.
        device: where the state lives.
        labels: one class label per problem, for a class-conditional generator
            (``None``: its default); checked by the generator (an unconditional one refuses them).
    """
    if labels is None:
        parts = [generator.init_variables(1, torch.Generator().manual_seed(int(s))) for s in seeds]
    else:
        labels = generator.check_labels(labels, len(seeds))
        parts = [generator.init_variables(1, torch.Generator().manual_seed(int(s)), labels=[c])
                 for s, c in zip(seeds, labels)]
    state = {k: torch.cat([p[k] for p in parts], 0).to(device) for k in parts[0]}
    if sphere:
        # Start on the spheres, so that the stage's anchors (its l1 balls' centres) are
        # feasible: an off-sphere start would be moved by the first projection and spend
        # much of the stage's l1 radius before any optimisation (the norm of a 512-d
        # Gaussian row is ~3% off the sphere's: l1 ~180 for 18 W+ rows).
        for name, dims in generator.sphere_variables(0).items():
            project_sphere_(state[name], dims)
    if split > 0:
        with torch.no_grad():
            state = generator.advance(state, 0, split)
    return state


def project_stage_to_range(
    generator: SplitGenerator,
    tracker: BestIterate,
    stages: Sequence[Stage],
    batch: ProblemBatch,
    index: int,
    steps: int,
    lr: float,
) -> None:
    """Algorithm 1, line 5: pull stage ``index - 1``'s solution into the range of the earlier layers.

    Its activations become ``G1(u)``, ``u`` the closest state in stage
    ``index - 2``'s feasible set (:func:`~ilo_pl.modules.generators.range.project_to_range`,
    ``steps`` Adam steps at ``lr``); the tracker's record gets the projected
    state with its own image and noiseless error. A sample whose projection
    is not finite keeps its solution. Nothing to do before stage 2, or when
    the split has no activation (two CSGM rounds at split 0).
    """
    if index < 2 or not computed_entries(generator, stages[index - 1].split):
        return
    src, dst = stages[index - 2], stages[index - 1]
    src_rec, dst_rec = tracker.records[index - 2], tracker.records[index - 1]
    merged, _ = range_projection(
        generator, src_rec["state"], src.split, src_rec["extra"]["feasible"], dst_rec["state"], dst.split,
        steps=steps, lr=lr,
    )
    with torch.no_grad():
        image = generator.render(merged, dst.split).float()
        err = batch.operator.measurement_error(batch.operator.A(image), batch.observation)
        tracker.replace(index - 1, merged, image, err, render=lambda st: generator.render(st, dst.split))
