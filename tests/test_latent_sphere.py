"""``LatentSphere``: the split-0 latents of a generator that declares no sphere, kept on their sphere."""

from __future__ import annotations

import pytest
import torch

from ilo_pl.api import solve
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.modules.generators import LatentSphere
from ilo_pl.operators import BoxMask
from ilo_pl.stages import Stage


class _NoSphere(DCGANGenerator):
    """The DCGAN without its declared sphere (as third-party generators may be)."""

    def sphere_variables(self, split: int):  # noqa: ANN201
        return {}


def test_adds_the_latent_sphere_only_where_none_is_declared() -> None:
    bare = _NoSphere(weights="random")
    wrapped = LatentSphere(bare)
    assert wrapped.sphere_variables(0) == {"h": (1, 2, 3)}
    assert wrapped.sphere_variables(2) == {}
    assert bare.sphere_variables(0) == {}  # the wrapped generator is untouched
    own = DCGANGenerator(weights="random")
    assert LatentSphere(own).sphere_variables(0) == own.sphere_variables(0)
    # everything else is the wrapped generator's; its identity adds the spheres (they change results)
    assert wrapped.identity() == {**bare.identity(), "latent_sphere": "h"} and wrapped.num_splits == bare.num_splits
    state = wrapped.init_variables(2, torch.Generator().manual_seed(0))
    assert torch.equal(wrapped.render(state, 0), bare.render(state, 0))


class _NoLatent(_NoSphere):
    """Its split-0 entry is not in the `latent` group."""

    def groups(self, split: int):  # noqa: ANN201
        return {k: "state" for k in super().groups(split)}


def test_refuses_what_it_cannot_wrap() -> None:
    with pytest.raises(TypeError, match="SplitGenerator"):
        LatentSphere(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no `latent` entry at split 0"):
        LatentSphere(_NoLatent(weights="random"))


def test_sphere_solve_through_the_wrapper_equals_the_declared_sphere() -> None:
    # The DCGAN declares z's sphere itself; the wrapper gives the same sphere to a copy that does not.
    own, bare = DCGANGenerator(), _NoSphere()
    op = BoxMask((38, 55, 14, 49)).build(own.image_shape, 0)
    with torch.no_grad():
        y = op(own.render(own.init_variables(1, torch.Generator().manual_seed(5)), 0))
    stages = [Stage(0, 6, lr=0.1), Stage(1, 4, lr=0.03, free=["state"], radius={"state": 100.0})]
    a = solve(own, op, y, stages, sphere=True)
    b = solve(LatentSphere(bare), op, y, stages, sphere=True)
    c = solve(bare, op, y, stages, sphere=True)  # declares nothing: no sphere
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_the_wrapper_meets_the_split_contract() -> None:
    from ilo_pl.testing import check_split_generator

    check_split_generator(LatentSphere(_NoSphere(weights="random")))
