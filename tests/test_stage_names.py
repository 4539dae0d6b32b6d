"""Stage keys that name nothing are refused (``ilo_pl.stages.check_stage_names``), not silently ignored."""

from __future__ import annotations

import pytest

from ilo_pl.modules import ILOModule
from ilo_pl.modules.generators import DCGANGenerator, StyleGAN2Generator
from ilo_pl.stages import Stage, check_stage_names

from conftest import TINY


@pytest.fixture(scope="module")
def dcgan() -> DCGANGenerator:
    return DCGANGenerator(weights="random")


def test_a_misspelt_radius_key_is_refused_with_the_valid_names(dcgan) -> None:  # noqa: ANN001
    stages = [Stage(0, 5), Stage(1, 5, free=["state"], radius={"staet": 300.0})]
    with pytest.raises(ValueError, match=r"stage 1 \(split 1\): `radius` key 'staet' is neither a group "
                                         r"\(state, latent, noise, skip, condition\) nor a pattern matching an entry .*\(h\)"):
        ILOModule(dcgan, stages)


def test_a_misspelt_free_key_is_refused_beside_a_valid_one(dcgan) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=r"`free` key 'latnet'"):
        ILOModule(dcgan, [Stage(0, 5, free=["latent", "latnet"])])


def test_groups_and_matching_patterns_pass() -> None:
    g = StyleGAN2Generator(TINY)
    check_stage_names([Stage(0, 1, free=["latent", "noise_[0-4]"], radius={"noise": 300.0, "noise_1": 10.0}),
                       Stage(1, 1, free=["state", "skip", "noise_6"], radius={"state": 500.0})], g)
    with pytest.raises(ValueError, match=r"`free` key 'noise_0'"):  # consumed before split 1
        check_stage_names([Stage(1, 1, free=["noise_0"])], g)
