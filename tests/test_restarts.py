"""Random restarts (``restarts: R``, ``restart_keep: K``): seeds, batching, pruning, the choice, the files."""

from __future__ import annotations

import csv
import re
from typing import List

import pytest
import pytorch_lightning as pl
import torch

from conftest import masked_faces, random_dcgan, two_stages

from ilo_pl.api import solve
from ilo_pl.callbacks.writer import ResultWriter
from ilo_pl.data import draw_from_generator
from ilo_pl.losses.base import LossTerm
from ilo_pl.modules import ILOModule
from ilo_pl.modules import finish as finish_mod
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.modules.restarts import RestartBatch, collapse, expand, restart_seed
from ilo_pl.operators import (
    CompressedSensing,
    Compose,
    GaussianNoise,
    Inpainting,
    Operator,
)
from ilo_pl.problem import ProblemBatch, ProblemResult, Solution
from ilo_pl.solutions import load_solution, regenerate


@pytest.fixture(scope="module")
def gen() -> DCGANGenerator:
    return random_dcgan()


@pytest.fixture(scope="module")
def problem(gen):
    """Two random-mask inpainting problems (per-problem masks) of faces in the generator's range."""
    return masked_faces(gen)


_QUIET = {"enable_progress_bar": False}


class _Rows(pl.Callback):
    """Records, per step, the stage and the rows (problem, restart) solved, and stage 0's final errors."""

    def __init__(self) -> None:
        self.steps: List[tuple] = []
        self.stage0_loss = None
        self.stage0_rows = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        rows = list(zip(batch.problem, batch.restart)) if isinstance(batch, RestartBatch) else None
        self.steps.append((pl_module.stage_index, rows))
        if pl_module.stage_index == 0:  # after the step's optimizer_step: the stage's last one is final
            self.stage0_loss = pl_module.tracker.records[0]["loss"].clone()
            self.stage0_rows = rows


def test_restart_seeds():
    assert restart_seed(12345, 0) == 12345  # restart 0 is the problem's own start
    seeds = {restart_seed(s, r) for s in range(50) for r in range(8)}
    assert len(seeds) == 400  # distinct, and never a neighbouring problem's seed
    assert all(restart_seed(s, r) not in range(50) for s in range(50) for r in range(1, 8))
    assert restart_seed(7, 3) == restart_seed(7, 3) < 2**62


def test_one_restart_solves_the_batch_itself(gen, problem):
    """R = 1: no expansion at all (the batch object is the one given), so results are today's, bit for bit."""
    _, op, y = problem
    batch = ProblemBatch(ids=["a", "b"], observation=y, operator=op, seeds=[5, 6])
    module = ILOModule(gen, two_stages(), restarts=1)
    assert finish_mod.prepare(module, batch) is batch
    seen = _Rows()
    plain = solve(gen, op, y, two_stages(), seeds=[5, 6], trainer_kwargs=_QUIET)
    one = solve(gen, op, y, two_stages(), seeds=[5, 6], restarts=1, restart_keep=1, callbacks=[seen], trainer_kwargs=_QUIET)
    assert all(rows is None for _, rows in seen.steps)
    assert torch.equal(plain.images, one.images)
    assert torch.equal(plain.measurement_loss, one.measurement_loss)
    assert [s.restart for s in one.solutions] == [0, 0]


def test_expanded_rows_carry_their_problem(gen):
    """Each row gets its problem's observation and operator parameters (per-problem buffers, compositions)."""
    shape = (3, 8, 8)
    specs = [CompressedSensing(ratio=0.25, shared=False)]
    ops = [Compose(specs[0].build(shape, s), GaussianNoise(0.0, clip=False)) for s in (3, 4)]
    op = Operator.stack(ops)
    x = torch.randn(2, *shape)
    y = op.A(x)
    batch = ProblemBatch(ids=["a", "b"], observation=y, operator=op, seeds=[10, 11], target=x, indices=[0, 1])
    big = expand(batch, 3)
    assert isinstance(big, RestartBatch) and len(big) == 6 and big.key == batch.key
    assert big.problem == [0, 0, 0, 1, 1, 1] and big.restart == [0, 1, 2, 0, 1, 2]
    assert big.seeds[0] == 10 and big.seeds[3] == 11 and len(set(big.seeds)) == 6
    assert big.indices == [0, 0, 0, 1, 1, 1]
    z = torch.randn(6, *shape)
    out = big.operator.A(z)
    for i, p in enumerate(big.problem):
        assert torch.equal(big.observation[i], y[p])
        assert torch.allclose(out[i : i + 1], ops[p].A(z[i : i + 1]), atol=1e-6)
    assert op.ops[0].signs.shape[0] == 2  # the batch's own operator is untouched


def test_restarted_problem_does_not_depend_on_its_batch_mates(gen, problem):
    ops, op, y = problem
    both = solve(gen, op, y, two_stages(), seeds=[5, 6], restarts=3, trainer_kwargs=_QUIET)
    for b in range(2):
        alone = solve(gen, ops[b], y[b : b + 1], two_stages(), seeds=[5 + b], restarts=3, trainer_kwargs=_QUIET)
        assert both.solutions[b].restart == alone.solutions[0].restart
        assert torch.allclose(both.images[b], alone.images[0], atol=1e-4), b
        assert torch.allclose(both.measurement_loss[b], alone.measurement_loss[0], rtol=1e-3)


def test_restart_zero_is_the_single_start(gen, problem):
    """Restart 0 of R is the solve R = 1 runs (same seed, rows independent): R only adds candidates."""
    _, op, y = problem
    captured = {}
    real = finish_mod.collapse

    def spy(result):  # noqa: ANN001, ANN202
        captured["rows"] = result
        return real(result)

    single = solve(gen, op, y, two_stages(), seeds=[5, 6], trainer_kwargs=_QUIET)
    mp = pytest.MonkeyPatch()
    mp.setattr(finish_mod, "collapse", spy)
    try:
        many = solve(gen, op, y, two_stages(), seeds=[5, 6], restarts=3, trainer_kwargs=_QUIET)
    finally:
        mp.undo()
    rows = captured["rows"]
    assert rows.batch.restart == [0, 1, 2, 0, 1, 2]
    for b in range(2):
        assert torch.allclose(rows.images[3 * b], single.images[b], atol=1e-4)
        # The winner is the argmin of the rows' measurement losses, and its image is returned.
        mine = rows.measurement_loss[3 * b : 3 * b + 3]
        r = int(mine.argmin())
        assert many.solutions[b].restart == r
        assert torch.equal(many.images[b], rows.images[3 * b + r])
        assert many.measurement_loss[b] == mine.min() <= single.measurement_loss[b] * (1 + 1e-3)


def test_keep_prunes_to_the_best_after_the_first_stage(gen, problem):
    _, op, y = problem
    seen = _Rows()
    res = solve(gen, op, y, two_stages(steps=(4, 3)), seeds=[5, 6], restarts=4, restart_keep=2, callbacks=[seen],
                trainer_kwargs=_QUIET)
    stage0 = [rows for s, rows in seen.steps if s == 0]
    stage1 = [rows for s, rows in seen.steps if s == 1]
    assert len(stage0) == 4 and all(len(r) == 8 for r in stage0)
    assert len(stage1) == 3 and all(r == stage1[0] for r in stage1)
    loss = seen.stage0_loss.tolist()
    expected = []
    for p in range(2):
        mine = [(loss[i], r) for i, (q, r) in enumerate(seen.stage0_rows) if q == p]
        expected += [(p, r) for r in sorted(r for _, r in sorted(mine)[:2])]
    assert stage1[0] == expected
    kept = {p: {r for q, r in expected if q == p} for p in range(2)}
    assert all(s.restart in kept[b] for b, s in enumerate(res.solutions))
    # The stage losses reported are the chosen restart's.
    assert len(res.stage_losses) == 2 and res.stage_losses[0].shape == (2,)


def test_collapse_picks_the_lowest_measurement_loss_never_the_truth():
    """Non-finite losses rank last, ties go to the lower restart; the ground truth plays no part."""
    parent = ProblemBatch(ids=["a", "b"], observation=torch.zeros(2, 1, 2, 2),
                          operator=Inpainting(torch.ones(2, 2)), seeds=[1, 2], target=torch.zeros(2, 1, 2, 2))
    rows = expand(parent, 3)
    loss = torch.tensor([0.5, float("nan"), 0.2, 0.3, 0.3, float("inf")])
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    sols = [Solution(split=0, stage=0, state={"latent": torch.full((1, 2), float(i))}) for i in range(6)]
    result = ProblemResult(batch=rows, images=images, measurement_loss=loss, solutions=sols,
                           stage_losses=[loss.clone()], failed=[None, "nan", None, None, None, None],
                           start=Solution(split=0, stage=0, state={"latent": torch.arange(6.0)[:, None]}))
    out = collapse(result)
    assert out.batch is parent
    assert [s.restart for s in out.solutions] == [2, 0]
    assert out.images[:, 0, 0, 0].tolist() == [2.0, 3.0]  # image 0 equals the truth: not chosen
    assert out.measurement_loss.tolist() == pytest.approx([0.2, 0.3])
    assert out.start.state["latent"][:, 0].tolist() == [2.0, 3.0]
    assert out.failed == [None, None]


def test_restart_index_in_csv_and_solution_regenerates(gen, problem, tmp_path):
    _, op, y = problem
    writer = ResultWriter(output_dir=tmp_path)
    res = solve(gen, op, y, two_stages(), ids=["a", "b"], seeds=[5, 6], restarts=3, restart_keep=2, callbacks=[writer],
                trainer_kwargs=_QUIET)
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = {r["id"]: r for r in csv.DictReader(open(run / "results.csv"))}
    for b, pid in enumerate(["a", "b"]):
        sol = load_solution(run / f"{pid}_solution.pt")
        assert sol["restart"] == res.solutions[b].restart == int(rows[pid]["restart"])
        image = regenerate(sol, gen)
        assert torch.equal(image, sol["image"]) and torch.equal(image[0], res.images[b])


def test_restarts_with_sna_are_reproducible(gen):
    g = torch.Generator().manual_seed(13)
    x = torch.cat([draw_from_generator(gen, g, split=0) for _ in range(2)])
    op = GaussianNoise(50.0)
    y = op(x, torch.Generator().manual_seed(2))
    kw = dict(seeds=[5, 6], sna=True, sna_samples=2, restarts=2, restart_keep=1, trainer_kwargs=_QUIET)
    a = solve(gen, op, y, two_stages(steps=(3, 2)), **kw)
    torch.manual_seed(99)  # the global RNG plays no part
    b = solve(gen, op, y, two_stages(steps=(3, 2)), **kw)
    assert torch.equal(a.images, b.images)
    alone = solve(gen, op, y[1:], two_stages(steps=(3, 2)), **{**kw, "seeds": [6]})
    assert torch.allclose(a.images[1], alone.images[0], atol=1e-4)


@pytest.mark.parametrize("kw, match", [
    ({"restarts": 0}, r"restarts must be an integer >= 1"),
    ({"restarts": 2.5}, r"restarts must be an integer >= 1"),
    ({"restarts": True}, r"restarts must be an integer >= 1"),
    ({"restarts": 4, "restart_keep": 5}, r"restart_keep=5 is more than restarts=4.*restart_keep <= 4"),
    ({"restarts": 4, "restart_keep": 0}, r"restart_keep must be an integer >= 1"),
    ({"restart_keep": 2}, r"restart_keep=2 is more than restarts=1"),
])
def test_bad_restart_values_are_refused(gen, kw, match):
    with pytest.raises(ValueError, match=match):
        ILOModule(gen, two_stages(), **kw)


def test_restarts_from_the_command_line():
    from ilo_pl.config import build_from_config

    built = build_from_config(["configs/inpainting_box.yaml"], ["--model.restarts", "4", "--model.restart_keep", "2"])
    assert (built.module.restarts, built.module.restart_keep) == (4, 2)
    with pytest.raises(Exception, match="restart_keep=5 is more than restarts=4"):
        build_from_config(["configs/inpainting_box.yaml"], ["--model.restarts", "4", "--model.restart_keep", "5"])


def test_csv_column_and_manifest_entries(gen):
    """``restart`` comes after the older columns; the manifest records the new settings only when set."""
    from ilo_pl.manifest import module_settings
    from ilo_pl.resume import CSV_FIELDS

    assert CSV_FIELDS[12:] == ["stlpips", "restart", "averaged"]
    plain = module_settings(ILOModule(gen, two_stages()))
    assert not {"restarts", "restart_keep", "consistency"} & set(plain)  # folders from before them still resume
    more = module_settings(ILOModule(gen, two_stages(), restarts=3, restart_keep=2, consistency="project"))
    assert (more["restarts"], more["restart_keep"], more["consistency"]) == (3, 2, "project")


def test_progress_gif_shows_the_winning_restart(gen, problem, tmp_path):
    from PIL import Image

    from ilo_pl.callbacks import OptimizationGIF

    class Spy(OptimizationGIF):
        def handle(self, trainer, pl_module, result):  # noqa: ANN001, ANN201
            self.counts = {k: len(v) for k, v in self._frames.items()}
            super().handle(trainer, pl_module, result)

    _, op, y = problem
    gif = Spy(every_n_steps=1, output_dir=tmp_path)
    res = solve(gen, op, y, two_stages(steps=(4, 3)), ids=["a", "b"], seeds=[5, 6], restarts=3, restart_keep=2,
                callbacks=[gif], trainer_kwargs=_QUIET)
    # Every restart's frames are kept apart: 4 steps of stage 0, 3 more for the 2 kept per problem.
    assert set(gif.counts) == {(p, r) for p in range(2) for r in range(3)}
    assert sorted(gif.counts.values()) == [4, 4, 7, 7, 7, 7]
    for b, pid in enumerate(("a", "b")):
        assert gif.counts[(b, res.solutions[b].restart)] == 7  # the winner ran both stages
        with Image.open(tmp_path / f"{pid}_progress.gif") as im:
            assert im.n_frames >= 7  # its frames (PIL merges a last frame equal to the one before)


# -- review fixes -----------------------------------------------------------------------------------
def test_progress_bar_names_the_problems_not_the_restart_rows(gen, problem):
    """The module solves the expanded batch (rows p0r0, p0r1, ...); the bar shows the problems' ids."""
    from ilo_pl.callbacks.progress import ProblemTQDMProgressBar

    class Bar(ProblemTQDMProgressBar):
        def __init__(self) -> None:
            super().__init__()
            self.seen: List[str] = []

        def get_metrics(self, trainer, pl_module):  # noqa: ANN001, ANN201
            m = super().get_metrics(trainer, pl_module)
            self.seen.append(m.get("problem"))
            return m

    _, op, y = problem
    bar = Bar()
    solve(gen, op, y, two_stages(), ids=["a", "b"], seeds=[5, 6], restarts=3, restart_keep=2, callbacks=[bar],
          log_every=2, trainer_kwargs={"enable_progress_bar": True})
    shown = [p for p in bar.seen if p]
    assert shown and set(shown) == {"a,b (1/1)"}


def test_moving_a_restart_batch_keeps_its_rows():
    """``to`` keeps the batch's class and fields: a RestartBatch moved again still knows its problems."""
    parent = ProblemBatch(ids=["a", "b"], observation=torch.zeros(2, 1, 2, 2), operator=Inpainting(torch.ones(2, 2)),
                          seeds=[1, 2], target=torch.zeros(2, 1, 2, 2), indices=[4, 7], labels=[0, 1])
    rows = expand(parent, 3)
    for moved in (rows.to(torch.device("cpu")), rows.to(torch.device("cpu")).to(torch.device("cpu"))):
        assert isinstance(moved, RestartBatch)
        assert (moved.problem, moved.restart) == (rows.problem, rows.restart)
        assert (moved.ids, moved.seeds) == (rows.ids, rows.seeds)
        assert moved.parent is not None and moved.parent.ids == ["a", "b"] and moved.key == parent.key
        assert moved.labels == [0, 0, 0, 1, 1, 1] and moved.indices == [4, 4, 4, 7, 7, 7]
        assert collapse(ProblemResult(batch=moved, images=torch.zeros(6, 1, 2, 2), measurement_loss=torch.arange(6.0),
                                      solutions=[Solution(0, 0, {}) for _ in range(6)], stage_losses=[],
                                      failed=[None] * 6)).batch.ids == ["a", "b"]
    plain = parent.to(torch.device("cpu"))
    assert type(plain) is ProblemBatch and (plain.ids, plain.indices, plain.labels) == (["a", "b"], [4, 7], [0, 1])


class _Poison(LossTerm):
    """The measurement error, but NaN at call ``at`` for each problem's best-fitting row at that step.

    Rows are problem-major (each problem's restarts side by side), so that row is the restart that
    would win: it fails with a good iterate kept, and stops there.
    """

    def __init__(self, at: int, problems: int) -> None:
        super().__init__()
        self.at, self.problems, self.calls = at, problems, 0
        self.hit: List[int] = []

    def forward(self, ctx):  # noqa: ANN001, ANN201
        err = ctx.measurement_error
        self.calls += 1
        if self.calls - 1 != self.at:
            return err
        per = err.shape[0] // self.problems
        rows = err.detach().view(self.problems, per).argmin(1) + torch.arange(self.problems) * per
        self.hit = rows.tolist()
        bad = torch.zeros(err.shape[0], dtype=torch.bool)
        bad[rows] = True
        return torch.where(bad, torch.full_like(err, float("nan")), err)


def test_a_failed_restart_takes_no_kept_slot(gen, problem):
    """Pruning ranks failed restarts after every healthy one: stage 0's last step poisons each problem's
    best-fitting row (an injected NaN); K = 1 keeps a healthy one."""
    _, op, y = problem
    poison, seen = _Poison(at=3, problems=2), _Rows()
    res = solve(gen, op, y, two_stages(steps=(4, 3)), losses={"mse": poison}, seeds=[5, 6], restarts=3, restart_keep=1,
                callbacks=[seen], trainer_kwargs=_QUIET)
    loss = seen.stage0_loss.tolist()
    for p, row in enumerate(poison.hit):
        mine = [i for i, (q, _) in enumerate(seen.stage0_rows) if q == p]
        assert loss[row] == min(loss[i] for i in mine)  # the failed row fit best: the old ranking kept it
    failed_rows = {seen.stage0_rows[i] for i in poison.hit}
    stage1 = [rows for s, rows in seen.steps if s == 1][0]
    assert len(stage1) == 2 and not failed_rows & set(stage1)
    assert res.failed == [None, None]


def test_a_failed_restart_does_not_win(gen, problem):
    """The final choice prefers restarts that did not fail: the last stage's last step poisons each
    problem's best-fitting row (an injected NaN); a healthy restart wins and nothing is reported failed."""
    _, op, y = problem
    poison, captured = _Poison(at=6, problems=2), {}
    real = finish_mod.collapse

    def spy(result):  # noqa: ANN001, ANN202
        captured["rows"] = result
        return real(result)

    mp = pytest.MonkeyPatch()
    mp.setattr(finish_mod, "collapse", spy)
    try:
        res = solve(gen, op, y, two_stages(steps=(4, 3)), losses={"mse": poison}, seeds=[5, 6], restarts=2,
                    trainer_kwargs=_QUIET)
    finally:
        mp.undo()
    rows = captured["rows"]
    for b, row in enumerate(poison.hit):
        assert rows.failed[row] is not None
        assert rows.measurement_loss[row] == rows.measurement_loss[2 * b : 2 * b + 2].min()  # it fit best
        assert res.solutions[b].restart != rows.batch.restart[row]
    assert res.failed == [None, None]


def test_collapse_reports_failed_only_when_every_restart_failed():
    parent = ProblemBatch(ids=["a", "b"], observation=torch.zeros(2, 1, 2, 2),
                          operator=Inpainting(torch.ones(2, 2)), seeds=[1, 2])
    rows = expand(parent, 3)
    loss = torch.tensor([0.1, 0.5, 0.3, 0.2, 0.1, float("nan")])
    failed = ["nan at stage 0", None, None, "nan", "inf", "nan"]
    result = ProblemResult(batch=rows, images=torch.zeros(6, 1, 2, 2), measurement_loss=loss,
                           solutions=[Solution(0, 0, {}) for _ in range(6)], stage_losses=[loss], failed=failed)
    out = collapse(result)
    assert [s.restart for s in out.solutions] == [2, 1]  # healthy first; all failed: the lowest error
    assert out.failed == [None, "inf"]


def test_keep_best_ranks_failed_rows_last():
    """keep_best_ reads the tracker's failures with its errors: a failed row keeps no slot a healthy one wants."""
    from types import SimpleNamespace

    from ilo_pl.modules.restarts import keep_best_
    from ilo_pl.modules.tracking import BestIterate

    parent = ProblemBatch(ids=["a"], observation=torch.zeros(1, 1, 2, 2), operator=Inpainting(torch.ones(2, 2)),
                          seeds=[1])
    rows = expand(parent, 3)
    tracker = BestIterate(3, torch.device("cpu"))
    tracker.begin_stage({"latent": torch.arange(3.0)[:, None]})
    tracker.records[0]["loss"] = torch.tensor([0.1, 0.3, 0.2])
    tracker.mark_failed(torch.tensor([True, False, False]), 2)
    noise = SimpleNamespace(generators=["g0", "g1", "g2"])
    keep_best_(SimpleNamespace(tracker=tracker, overflow=None, noise_draws=noise), rows, 1)
    assert rows.restart == [2] and noise.generators == ["g2"]
    assert tracker.records[0]["state"]["latent"].tolist() == [[2.0]]


def test_restart_keep_that_prunes_nothing_is_unset(gen):
    """K = R, or any K with a one-stage schedule (warned), is restart_keep unset: not in the manifest."""
    import warnings

    from ilo_pl.manifest import module_settings

    one_stage = two_stages()[:1]
    with pytest.warns(UserWarning, match=r"restart_keep=2 has no effect.*only one"):
        module = ILOModule(gen, one_stage, restarts=4, restart_keep=2)
    assert module.restart_keep is None
    assert module_settings(module) == module_settings(ILOModule(gen, one_stage, restarts=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = ILOModule(gen, two_stages(), restarts=3, restart_keep=3)
    assert module.restart_keep is None and "restart_keep" not in module_settings(module)
    assert module_settings(module) == module_settings(ILOModule(gen, two_stages(), restarts=3))


def test_rows_from_before_restarts_get_restart_0_on_resume(tmp_path):
    """A results.csv (or a solution's row) written before the restart column: a resume fills in 0."""
    from ilo_pl.resume import CSV_FIELDS, prepare_resume

    old = [f for f in CSV_FIELDS if f != "restart"]
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old)
        w.writeheader()
        w.writerow({"index": 0, "id": "a", "measurement_loss": 0.5, "best_stage": 1, "split": 1, "failed": ""})
    scan = prepare_resume(tmp_path, ["a", "b"], require_solution=False)
    assert scan.finished == [0] and scan.rows[0]["restart"] == "0"
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["id"], r["restart"]) for r in rows] == [("a", "0")]


def test_a_run_folder_from_before_restarts_and_labels_resumes(tmp_path):
    """An older config.yaml lacks restarts, restart_keep, consistency and class_labels: they count as defaults."""
    import yaml

    from ilo_pl.cli import check_resume_config
    from ilo_pl.config import build_from_config

    now = build_from_config(["configs/inpainting_box.yaml"]).config
    assert (now["model"]["restarts"], now["model"]["restart_keep"], now["model"]["consistency"]) == (1, None, "none")
    assert "class_labels" in now["data"] and now["data"]["class_labels"] is None
    before = {**now, "model": dict(now["model"]), "data": dict(now["data"])}
    for key in ("restarts", "restart_keep", "consistency"):
        del before["model"][key]
    del before["data"]["class_labels"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(before))
    check_resume_config(tmp_path / "config.yaml", yaml.safe_dump(now))  # resumes
    for model, data, shown in [({"restarts": 3}, {}, "model.restarts: 1 -> 3"),
                               ({"consistency": "project"}, {}, "model.consistency: 'none' -> 'project'"),
                               ({}, {"class_labels": 2}, "data.class_labels: None -> 2")]:
        other = {**now, "model": {**now["model"], **model}, "data": {**now["data"], **data}}
        with pytest.raises(ValueError, match=re.escape(shown)):
            check_resume_config(tmp_path / "config.yaml", yaml.safe_dump(other))
    # restart_keep equal to restarts keeps every restart: the same run as without it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**now, "model": {**now["model"], "restarts": 3}}))
    check_resume_config(tmp_path / "config.yaml",
                        yaml.safe_dump({**now, "model": {**now["model"], "restarts": 3, "restart_keep": 3}}))
