"""``restart_average``: the mean of each problem's best restarts, chosen by measurement loss."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import masked_faces, random_dcgan, two_stages

from ilo_pl.api import solve
from ilo_pl.callbacks.writer import ResultWriter
from ilo_pl.data import draw_from_generator
from ilo_pl.modules import ILOModule
from ilo_pl.modules import finish as finish_mod
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.modules.restarts import average_restarts, collapse, expand
from ilo_pl.operators import GaussianNoise, Inpainting
from ilo_pl.problem import ProblemBatch, ProblemResult, Solution
from ilo_pl.solutions import load_solution, regenerate

_QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def gen() -> DCGANGenerator:
    return random_dcgan()


@pytest.fixture(scope="module")
def problem(gen):
    """Two random-mask inpainting problems (per-problem masks) of faces in the generator's range."""
    return masked_faces(gen)


def _spy_rows(mp: pytest.MonkeyPatch) -> dict:
    """Capture the per-restart result the module collapses."""
    captured = {}
    real = finish_mod.collapse

    def spy(result):  # noqa: ANN001, ANN202
        captured["rows"] = result
        return real(result)

    mp.setattr(finish_mod, "collapse", spy)
    return captured


def test_mean_of_the_best_k_by_measurement_loss(gen, problem, monkeypatch):
    _, op, y = problem
    captured = _spy_rows(monkeypatch)
    res = solve(gen, op, y, two_stages(), seeds=[5, 6], restarts=4, restart_average=2, trainer_kwargs=_QUIET)
    rows = captured["rows"]
    for b in range(2):
        loss = rows.measurement_loss[4 * b : 4 * b + 4]
        best = loss.argsort()[:2].tolist()
        assert res.solutions[b].restart == best[0]
        assert res.solutions[b].averaged == tuple(best)
        want = rows.images[[4 * b + r for r in best]].mean(0)
        assert torch.allclose(res.images[b], want, atol=1e-6)
        # measurement_loss is the returned (mean) image's own error.
        own = op.measurement_error(op.A(res.images), y)[b]
        assert torch.allclose(res.measurement_loss[b], own, rtol=1e-5)


def test_average_one_is_the_best_restart(gen, problem):
    _, op, y = problem
    kw = dict(seeds=[5, 6], restarts=3, trainer_kwargs=_QUIET)
    a = solve(gen, op, y, two_stages(), **kw)
    b = solve(gen, op, y, two_stages(), restart_average=1, **kw)
    assert torch.equal(a.images, b.images)
    assert all(s.averaged == () and s.correction is None for s in b.solutions)


def test_average_of_all_restarts_is_the_mean_of_the_rows(gen, problem, monkeypatch):
    """With K = R every restart is in the mean: the image does not depend on the ranking."""
    _, op, y = problem
    captured = _spy_rows(monkeypatch)
    res = solve(gen, op, y, two_stages(), seeds=[5, 6], restarts=3, restart_average=3, trainer_kwargs=_QUIET)
    rows = captured["rows"]
    for b in range(2):
        assert sorted(res.solutions[b].averaged) == [0, 1, 2]
        assert torch.allclose(res.images[b], rows.images[3 * b : 3 * b + 3].mean(0), atol=1e-6)


def test_averaged_solution_regenerates_the_mean_and_csv_lists_it(gen, problem, tmp_path):
    _, op, y = problem
    writer = ResultWriter(output_dir=tmp_path)
    res = solve(gen, op, y, two_stages(), ids=["a", "b"], seeds=[5, 6], restarts=3, restart_average=2,
                callbacks=[writer], trainer_kwargs=_QUIET)
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = {r["id"]: r for r in csv.DictReader(open(run / "results.csv"))}
    for b, pid in enumerate(["a", "b"]):
        sol = load_solution(run / f"{pid}_solution.pt")
        assert sol["averaged"] == list(res.solutions[b].averaged) and len(sol["averaged"]) == 2
        assert rows[pid]["averaged"] == " ".join(str(r) for r in sol["averaged"])
        assert "mean of restarts" in sol["consistency"]["note"] and sol["consistency"]["mode"] == "none"
        image = regenerate(sol, gen)
        assert torch.equal(image, sol["image"]) and torch.equal(image[0], res.images[b])


def test_average_then_project_is_consistent_and_regenerates(gen, problem, tmp_path):
    """The consistency step acts on the mean; the correction holds both, and regenerates the same bits."""
    _, op, y = problem
    writer = ResultWriter(output_dir=tmp_path)
    res = solve(gen, op, y, two_stages(), ids=["a", "b"], seeds=[5, 6], restarts=3, restart_average=3,
                consistency="project", callbacks=[writer], trainer_kwargs=_QUIET)
    assert torch.allclose(op.A(res.images), y, atol=1e-5)  # inpainting's projection pastes the observed pixels
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for b, pid in enumerate(["a", "b"]):
        sol = load_solution(run / f"{pid}_solution.pt")
        assert sol["consistency"]["mode"] == "project" and "mean of restarts" in sol["consistency"]["note"]
        assert torch.equal(regenerate(sol, gen)[0], res.images[b])


def test_failed_restarts_are_left_out_of_the_mean():
    from ilo_pl.modules.restarts import _members
    from ilo_pl.problem import ProblemResult

    class _B:  # the two fields ranking reads
        problem = [0, 0, 0]
        restart = [0, 1, 2]

    result = ProblemResult(batch=_B(), images=torch.zeros(3, 1, 2, 2), measurement_loss=torch.tensor([0.3, 0.1, 0.2]),
                           solutions=[], stage_losses=[], failed=[None, "nan", None])
    assert _members(result, 2) == {0: [2, 0]}  # restart 1 fits best but failed
    result.failed = ["nan"] * 3
    assert _members(result, 2) == {0: [1]}  # all failed: the best one alone


@pytest.mark.parametrize("kw, match", [
    ({"restarts": 3, "restart_average": 0}, r"restart_average must be an integer >= 1"),
    ({"restarts": 3, "restart_average": 1.5}, r"restart_average must be an integer >= 1"),
    ({"restarts": 3, "restart_average": 4}, r"restart_average=4 is more than restarts=3.*restarts >= 4"),
    ({"restart_average": 2}, r"restart_average=2 is more than restarts=1"),
    ({"restarts": 4, "restart_keep": 1, "restart_average": 2}, r"restart_average=2 is more than restart_keep=1"),
])
def test_bad_average_values_are_refused(gen, kw, match):
    with pytest.raises(ValueError, match=match):
        ILOModule(gen, two_stages(), **kw)


def test_average_from_the_command_line_and_manifest():
    from ilo_pl.config import build_from_config
    from ilo_pl.manifest import module_settings

    built = build_from_config(["configs/inpainting_box.yaml"], ["--model.restarts", "4", "--model.restart_average", "3"])
    assert built.module.restart_average == 3
    assert module_settings(built.module)["restart_average"] == 3
    plain = build_from_config(["configs/inpainting_box.yaml"]).module
    assert "restart_average" not in module_settings(plain)  # folders from before it still resume
    with pytest.raises(Exception, match="restart_average=5 is more than restarts=4"):
        build_from_config(["configs/inpainting_box.yaml"], ["--model.restarts", "4", "--model.restart_average", "5"])



def test_average_with_pruned_restarts(gen, problem, monkeypatch):
    """``restart_keep`` prunes after CSGM: the mean is over the kept rows, named by their own restarts."""
    _, op, y = problem
    captured = _spy_rows(monkeypatch)
    res = solve(gen, op, y, two_stages(), seeds=[5, 6], restarts=4, restart_keep=2, restart_average=2,
                trainer_kwargs=_QUIET)
    rows = captured["rows"]
    assert len(rows.batch) == 4  # two kept per problem
    for b in range(2):
        mine = [i for i, p in enumerate(rows.batch.problem) if p == b]
        assert sorted(res.solutions[b].averaged) == sorted(rows.batch.restart[i] for i in mine)
        assert torch.allclose(res.images[b], rows.images[mine].mean(0), atol=1e-6)


def test_average_then_prox_on_noise(gen):
    g = torch.Generator().manual_seed(7)
    x = torch.cat([draw_from_generator(gen, g, split=2) for _ in range(2)])
    op = GaussianNoise(50.0)
    y = op(x, torch.Generator().manual_seed(1))
    kw = dict(seeds=[1, 2], restarts=3, restart_average=3, trainer_kwargs=_QUIET)
    mean = solve(gen, op, y, two_stages(), **kw)
    both = solve(gen, op, y, two_stages(), consistency="prox", **kw)
    for b in range(2):
        assert both.solutions[b].consistency == "prox" and len(both.solutions[b].averaged) == 3
        # prox moves the mean towards y (never away): its measurement error does not grow.
        assert both.measurement_loss[b] <= mean.measurement_loss[b] * (1 + 1e-5)
        step = both.solutions[b].correction - mean.solutions[b].correction  # the step alone
        assert torch.allclose(both.images[b], (mean.images[b] + step[0]).clamp(-1, 1), atol=1e-6)


def test_project_after_a_mean_outside_the_image_range_is_exact():
    """A generator whose images leave [-1, 1] (NVIDIA networks are not clamped): the step is taken on the
    unclamped mean it is added to, so the observed pixels come out exactly (``A x = y``)."""
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    op = Inpainting(mask)
    y = torch.tensor([[[[0.5, 0.0], [0.0, -0.25]]]])
    parent = ProblemBatch(ids=["a"], observation=y, operator=op, seeds=[1])
    rows = expand(parent, 2)
    renders = torch.tensor([[[[1.6, 0.3], [-0.2, -1.8]]], [[[1.2, 0.1], [0.4, -1.4]]]])  # beyond [-1, 1]
    loss = op.measurement_error(op.A(renders), torch.cat([y, y]))
    result = ProblemResult(batch=rows, images=renders, measurement_loss=loss,
                           solutions=[Solution(0, 0, {}, restart=r) for r in range(2)],
                           stage_losses=[loss], failed=[None, None])
    chosen = collapse(result)
    averaged = average_restarts(result, chosen, 2)
    out = finish_mod.apply_consistency(averaged, "project", renders=chosen.images)
    assert torch.allclose(op.A(out.images), y, atol=1e-6)
    assert torch.equal(out.images, (chosen.images + out.solutions[0].correction).clamp(-1, 1))  # as regenerate


def test_a_lone_healthy_restart_is_not_marked_averaged():
    parent = ProblemBatch(ids=["a"], observation=torch.zeros(1, 1, 2, 2), operator=Inpainting(torch.ones(2, 2)), seeds=[1])
    rows = expand(parent, 3)
    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2).clone() / 4
    loss = torch.tensor([0.1, 0.2, 0.3])
    result = ProblemResult(batch=rows, images=images, measurement_loss=loss,
                           solutions=[Solution(0, 0, {}, restart=r) for r in range(3)],
                           stage_losses=[loss], failed=[None, "nan", "nan"])
    out = average_restarts(result, collapse(result), 3)
    assert out.solutions[0].averaged == () and out.solutions[0].correction is None
    assert torch.equal(out.images[0], images[0])
