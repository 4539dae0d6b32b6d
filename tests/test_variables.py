"""A stage's variables (``ilo_pl.modules.variables``), ``ProblemBatches`` and ``ResultWriter.open_run_dir``."""

from __future__ import annotations

import math

import pytest
import torch

from ilo_pl.callbacks.writer import ResultWriter
from ilo_pl.data import ProblemBatches
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.modules.variables import initial_state, stage_variables
from ilo_pl.stages import Stage


@pytest.fixture(scope="module")
def gen() -> DCGANGenerator:
    return DCGANGenerator(weights="random")


def test_stage_variables_split_free_and_fixed_with_their_constraints(gen) -> None:  # noqa: ANN001
    state = {"a": torch.randn(2, 3, dtype=torch.float64), "b": torch.randn(2, 4), "c": torch.randn(2, 5)}
    groups = {"a": "state", "b": "latent", "c": "noise"}
    stage = Stage(1, 5, free=["state", "latent"], radius={"state": 10.0})
    v = stage_variables(state, stage, groups, {"b": (1,)}, torch.device("cpu"))
    assert list(v.params) == ["a", "b"] and list(v.fixed) == ["c"]
    assert all(p.dtype == torch.float32 and p.requires_grad for p in v.params.values())
    assert torch.equal(v.params["a"].detach(), state["a"].float())
    assert v.params["a"].data_ptr() != state["a"].data_ptr()  # a copy: the caller's state is untouched
    (param, anchor, radius), = v.l1
    assert param is v.params["a"] and radius == 10.0 and torch.equal(anchor, state["a"].float())
    assert anchor.data_ptr() != param.data_ptr()  # the anchor does not move with the parameter
    assert v.spheres == [(v.params["b"], (1,))]
    assert v.feasible.free == ["a", "b"] and set(v.feasible.balls) == {"a"} and v.feasible.spheres == {"b": (1,)}
    assert math.isinf(stage.radius_of("b", "latent"))  # no ball for b: unconstrained
    assert set(v.state()) == {"a", "b", "c"}


def test_stage_variables_refuse_a_stage_that_frees_nothing() -> None:
    with pytest.raises(ValueError, match=r"frees no variable: its `free` \['noise'\] matches none of \['a'\]"):
        stage_variables({"a": torch.zeros(1, 2)}, Stage(0, 1, free=["noise"]), {"a": "latent"}, {}, torch.device("cpu"))


def test_initial_state_is_per_problem_and_on_the_sphere(gen) -> None:  # noqa: ANN001
    both = initial_state(gen, [3, 4], 0, sphere=False, device=torch.device("cpu"))
    alone = initial_state(gen, [4], 0, sphere=False, device=torch.device("cpu"))
    assert torch.equal(both["h"][1:], alone["h"])  # a problem's start does not depend on its batch-mates
    on = initial_state(gen, [3], 0, sphere=True, device=torch.device("cpu"))["h"]
    assert float(on.norm()) == pytest.approx(math.sqrt(on[0].numel()), rel=1e-5)
    deeper = initial_state(gen, [3], 2, sphere=False, device=torch.device("cpu"))
    assert torch.equal(deeper["h"], gen.advance(initial_state(gen, [3], 0, False, torch.device("cpu")), 0, 2)["h"])


def test_problem_batches_takes_problem_batches_only() -> None:
    with pytest.raises(TypeError, match="ProblemBatch"):
        ProblemBatches([torch.zeros(1)])


def test_open_run_dir_new_given_and_existing(tmp_path) -> None:  # noqa: ANN001
    first = ResultWriter(output_dir=tmp_path).open_run_dir()
    second = ResultWriter(output_dir=tmp_path).open_run_dir()
    assert (first.name, second.name) == ("run_000", "run_001")  # never an earlier run's folder
    given = ResultWriter(run_dir=tmp_path / "mine" / "r").open_run_dir()
    assert given == tmp_path / "mine" / "r" and given.is_dir()
    (given / "keep.txt").write_text("x")
    assert ResultWriter(run_dir=given).open_run_dir() == given and (given / "keep.txt").read_text() == "x"
