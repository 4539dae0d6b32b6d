"""Projection to the range of the earlier layers (ILO, Algorithm 1, line 5), for any split generator.

After a stage at split ``k1`` has moved the activation off the range of
``G1`` (the layers before ``k1``), Algorithm 1 pulls it back before going
deeper: it looks for the state ``u`` at the previous stage's split ``k0``,
inside that stage's feasible set, whose ``G1(u)`` comes closest to the
solution, and hands ``G1(u)`` on. Only the entries ``G1`` *computes* (the
activations: every group but ``latent``, ``noise`` and ``condition``) are
replaced; the entries it merely carries through (W+ rows and noises not
consumed before ``k1``, class labels) keep the solution's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from ilo_pl.modules.generators.base import SplitGenerator, State
from ilo_pl.projections import L1Workspace, project_l1_ball_, project_sphere_

#: Groups that hold input variables, which ``advance`` carries through unchanged.
INPUT_GROUPS = ("latent", "noise", "condition")


@dataclass
class FeasibleSet:
    """Where a stage's variables may go: its free entries, their l1 balls and spheres.

    Attributes:
        free: names of the entries the stage optimises (the others are fixed).
        balls: ``name -> (anchor, radius)``: ``||v - anchor||_1 <= radius`` per sample.
        spheres: ``name -> dims``: the norm over ``dims`` is ``sqrt(numel over dims)``.
    """

    free: List[str]
    balls: Dict[str, Tuple[Tensor, float]] = field(default_factory=dict)
    spheres: Dict[str, Tuple[int, ...]] = field(default_factory=dict)

    @torch.no_grad()
    def project_(self, name: str, value: Tensor) -> None:
        """In place: move entry ``name`` into the set (sphere first, then the l1 ball).

        Never reads values to the host; a non-finite sample is left as it is.
        """
        if name in self.spheres:
            project_sphere_(value, self.spheres[name])
        if name in self.balls:
            anchor, radius = self.balls[name]
            project_l1_ball_(value, anchor, radius, L1Workspace(anchor, host_reads=False))


def computed_entries(generator: SplitGenerator, split: int) -> List[str]:
    """The entries of the state at ``split`` that ``G1`` computes (not input variables)."""
    return [k for k, g in generator.groups(split).items() if g not in INPUT_GROUPS]


def project_to_range(
    generator: SplitGenerator,
    start: State,
    split0: int,
    feasible: FeasibleSet,
    solution: Mapping[str, Tensor],
    split1: int,
    steps: int = 100,
    lr: float = 0.05,
) -> Tuple[State, State]:
    """Algorithm 1, line 5: the state at ``split1`` nearest ``solution`` that ``G1`` reaches from ``feasible``.

    Searches ``u`` (the state at ``split0``; its free entries start at
    ``start`` and move inside ``feasible``, the others stay) minimising the
    squared error of ``G1(u)``'s computed entries to ``solution``'s, by Adam
    projected onto ``feasible`` after every step. The loss is a per-sample
    mean summed over samples, so each sample's search is its own. With
    ``split0 == split1`` (two rounds at one split) ``G1`` is the identity and
    the result is exact: each computed entry projected onto its ball (a fixed
    entry keeps ``start``'s value).

    Args:
        generator: the split generator.
        start: the state at ``split0`` the search starts from (the earlier
            stage's solution).
        split0: the earlier stage's split.
        feasible: the earlier stage's feasible set.
        solution: the state at ``split1`` to project.
        split1: its split (``>= split0``).
        steps: Adam steps of the search.
        lr: Adam's learning rate.

    Returns:
        ``(projected, u)``: the state at ``split1`` (computed entries ``G1(u)``,
        the rest ``solution``'s) and the state at ``split0`` found.
    """
    if split1 < split0:
        raise ValueError(f"cannot project a state at split {split1} to the range of a later split {split0}")
    computed = computed_entries(generator, split1)
    free = {k: start[k].detach().clone() for k in feasible.free if k in start}
    if split0 == split1:
        with torch.no_grad():
            out = {}
            for k in computed:
                out[k] = solution[k].detach().clone() if k in free else start[k].detach().clone()
                if k in free:
                    feasible.project_(k, out[k])
        u = {**start, **out}
        return {k: (out[k] if k in computed else solution[k]) for k in solution}, u
    if free and computed and steps > 0:
        for v in free.values():
            v.requires_grad_(True)
        opt = torch.optim.Adam(list(free.values()), lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                out = generator.advance({**start, **free}, split0, split1)
                loss = sum((out[k] - solution[k]).pow(2).flatten(1).mean(1).sum() for k in computed)
                loss.backward()
                opt.step()
                for k, v in free.items():
                    feasible.project_(k, v.data)
    u = {**start, **{k: v.detach() for k, v in free.items()}}
    with torch.no_grad():
        out = generator.advance(u, split0, split1)
    return {k: (out[k] if k in computed else solution[k]) for k in solution}, u
