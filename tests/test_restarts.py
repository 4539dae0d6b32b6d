"""Random restarts (``restarts: R``, ``restart_keep: K``): seeds, batching, pruning, the choice, the files."""

from __future__ import annotations

import csv
from typing import List

import pytest
import pytorch_lightning as pl
import torch

from ilo_pl.api import solve
from ilo_pl.callbacks.writer import ResultWriter
from ilo_pl.data import draw_from_generator
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
    RandomMask,
)
from ilo_pl.problem import ProblemBatch, ProblemResult, Solution
from ilo_pl.solutions import load_solution, regenerate
from ilo_pl.stages import Stage


@pytest.fixture(scope="module")
def gen() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator()


@pytest.fixture(scope="module")
def problem(gen):
    """Two random-mask inpainting problems (per-problem masks) of faces in the generator's range."""
    g = torch.Generator().manual_seed(3)
    x = torch.cat([draw_from_generator(gen, g, split=2) for _ in range(2)])
    ops = [RandomMask(0.3).build(gen.image_shape, s) for s in (11, 12)]
    op = Inpainting.stack(ops)
    return ops, op, op(x)


def _stages(steps=(4, 3)) -> List[Stage]:
    return [Stage(split=0, steps=steps[0], lr=0.1, free=["latent"]),
            Stage(split=1, steps=steps[1], lr=0.1, free=["state"], radius={"state": 200.0})]


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
    module = ILOModule(gen, _stages(), restarts=1)
    assert finish_mod.prepare(module, batch) is batch
    seen = _Rows()
    plain = solve(gen, op, y, _stages(), seeds=[5, 6], trainer_kwargs=_QUIET)
    one = solve(gen, op, y, _stages(), seeds=[5, 6], restarts=1, restart_keep=1, callbacks=[seen], trainer_kwargs=_QUIET)
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
    both = solve(gen, op, y, _stages(), seeds=[5, 6], restarts=3, trainer_kwargs=_QUIET)
    for b in range(2):
        alone = solve(gen, ops[b], y[b : b + 1], _stages(), seeds=[5 + b], restarts=3, trainer_kwargs=_QUIET)
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

    single = solve(gen, op, y, _stages(), seeds=[5, 6], trainer_kwargs=_QUIET)
    mp = pytest.MonkeyPatch()
    mp.setattr(finish_mod, "collapse", spy)
    try:
        many = solve(gen, op, y, _stages(), seeds=[5, 6], restarts=3, trainer_kwargs=_QUIET)
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
    res = solve(gen, op, y, _stages(steps=(4, 3)), seeds=[5, 6], restarts=4, restart_keep=2, callbacks=[seen],
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
    res = solve(gen, op, y, _stages(), ids=["a", "b"], seeds=[5, 6], restarts=3, restart_keep=2, callbacks=[writer],
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
    a = solve(gen, op, y, _stages(steps=(3, 2)), **kw)
    torch.manual_seed(99)  # the global RNG plays no part
    b = solve(gen, op, y, _stages(steps=(3, 2)), **kw)
    assert torch.equal(a.images, b.images)
    alone = solve(gen, op, y[1:], _stages(steps=(3, 2)), **{**kw, "seeds": [6]})
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
        ILOModule(gen, _stages(), **kw)


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

    assert CSV_FIELDS[12:] == ["stlpips", "restart"]
    plain = module_settings(ILOModule(gen, _stages()))
    assert not {"restarts", "restart_keep", "consistency"} & set(plain)  # folders from before them still resume
    more = module_settings(ILOModule(gen, _stages(), restarts=3, restart_keep=2, consistency="project"))
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
    res = solve(gen, op, y, _stages(steps=(4, 3)), ids=["a", "b"], seeds=[5, 6], restarts=3, restart_keep=2,
                callbacks=[gif], trainer_kwargs=_QUIET)
    # Every restart's frames are kept apart: 4 steps of stage 0, 3 more for the 2 kept per problem.
    assert set(gif.counts) == {(p, r) for p in range(2) for r in range(3)}
    assert sorted(gif.counts.values()) == [4, 4, 7, 7, 7, 7]
    for b, pid in enumerate(("a", "b")):
        assert gif.counts[(b, res.solutions[b].restart)] == 7  # the winner ran both stages
        with Image.open(tmp_path / f"{pid}_progress.gif") as im:
            assert im.n_frames >= 7  # its frames (PIL merges a last frame equal to the one before)
