"""Algorithm 1 as ILO defines it: what a solve hands on, scores and returns.

* the iterate after a stage's last step is scored (``selection="last"``
  returns the final iterate, not the one before it);
* projection to the range (Algorithm 1, line 5): replaces only what ``G1``
  computes, keeps the earlier variables in their feasible set, projects
  rounds at one split, and the returned solution always renders to the
  returned image with the returned loss;
* sphere-constrained starts are on the sphere, so a stage's l1 anchor is feasible;
* under 16-mixed (GradScaler) a sample with non-finite gradients does not
  hold back its batch-mates, and is flagged.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import pytest
import pytorch_lightning as pl
import torch

from conftest import TINY
from ilo_pl.api import solve
from ilo_pl.losses.base import LossContext, LossTerm, MeasurementLoss
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.modules.generators.range import FeasibleSet, computed_entries, project_to_range
from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator
from ilo_pl.modules.overflow import OVERFLOW_PATIENCE
from ilo_pl.policy import host_reads as host_reads_policy
from ilo_pl.operators import BoxMask
from ilo_pl.projections import project_sphere_
from ilo_pl.stages import Stage


@pytest.fixture(scope="module")
def dcgan() -> DCGANGenerator:
    return DCGANGenerator()


@pytest.fixture(scope="module")
def sg2() -> StyleGAN2Generator:
    if not TINY.is_file():
        pytest.fail(f"missing shared fixture {TINY}: the tests need ../shared/fixtures beside the clone")
    return StyleGAN2Generator(checkpoint=TINY)


@pytest.fixture(scope="module")
def box_problem(dcgan: DCGANGenerator):
    with torch.no_grad():
        x = dcgan.render(dcgan.init_variables(2, torch.Generator().manual_seed(5)), 0)
    op = BoxMask([38, 55, 14, 49]).build(dcgan.image_shape, seed=0)
    return op, op(x)


def _quiet() -> Dict[str, Any]:
    return {"enable_progress_bar": False}


def _check_reproduces(gen, op, y, result) -> None:
    """Each solution renders to its returned image and has the returned measurement loss."""
    for b, sol in enumerate(result.solutions):
        with torch.no_grad():
            img = gen.render(sol.state, sol.split).float()
            loss = op.measurement_error(op.A(img), y[b : b + 1])
        assert torch.equal(img, result.images[b : b + 1]), f"sample {b}: solution does not render to its image"
        assert float(loss) == pytest.approx(float(result.measurement_loss[b]), rel=1e-6, abs=1e-9)


class _FinalState(pl.Callback):
    """Records the module's variables after the last optimizer step of the problem."""

    def __init__(self) -> None:
        self.state: Dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.state = {k: v.detach().clone() for k, v in pl_module.current_state().items()}


# ---------------------------------------------------------------------- solutions reproduce outputs
@pytest.mark.parametrize("selection", ["best", "last"])
@pytest.mark.parametrize("ptr", [False, True])
def test_solution_reproduces_image_and_loss(dcgan, box_problem, selection: str, ptr: bool) -> None:
    op, y = box_problem
    # The last stage barely moves (lr 1e-6): the projected stage 1 is a real contender, the
    # case in which the image and loss of the unprojected state used to be returned.
    stages = [
        Stage(0, 20),
        Stage(1, 10, lr=0.01, radius={"state": 500.0}),
        Stage(1, 5, lr=0.01, radius={"state": 100.0}),  # a second round at the same split
        Stage(2, 2, lr=1e-6, radius={"state": 300.0}),
    ]
    result = solve(dcgan, op, y, stages, project_to_range=ptr, range_steps=30, selection=selection,
                   sphere=True, trainer_kwargs=_quiet())
    _check_reproduces(dcgan, op, y, result)


def test_last_selection_returns_the_final_iterate(dcgan, box_problem) -> None:
    op, y = box_problem
    rec = _FinalState()
    result = solve(dcgan, op, y, [Stage(0, 6), Stage(1, 4, lr=0.05, radius={"state": 500.0})],
                   selection="last", callbacks=[rec], trainer_kwargs=_quiet())
    for b, sol in enumerate(result.solutions):
        assert sol.stage == 1
        assert torch.equal(sol.state["h"], rec.state["h"][b : b + 1]), "the last step's iterate was not returned"
    _check_reproduces(dcgan, op, y, result)


def test_best_selection_scores_the_final_iterate(dcgan, box_problem) -> None:
    # Plain gradient descent on a box loss keeps improving: with two steps the best
    # iterate is the state after the second step, which only the final scoring sees.
    op, y = box_problem
    rec = _FinalState()
    result = solve(dcgan, op, y, [Stage(0, 2, lr=0.01, free=["latent"])], rampup=0.0, rampdown=0.0,
                   callbacks=[rec], trainer_kwargs=_quiet())
    assert torch.equal(result.solutions[0].state["h"], rec.state["h"][0:1])


# ---------------------------------------------------------------------- project_to_range (the function)
def test_range_projection_keeps_carried_entries_and_computes_the_rest(sg2: StyleGAN2Generator) -> None:
    g = torch.Generator().manual_seed(3)
    v0 = sg2.init_variables(2, g)
    start = sg2.advance(v0, 0, 1)
    solution = sg2.advance(sg2.init_variables(2, g), 0, 3)  # another point: carried entries differ
    feasible = FeasibleSet(["latent", "h", "noise_1", "noise_2"])
    projected, u = project_to_range(sg2, start, 1, feasible, solution, 3, steps=5, lr=0.01)
    assert computed_entries(sg2, 3) == [k for k in ("h", "skip") if k in projected]
    for k in solution:
        if k in ("h", "skip"):
            assert torch.equal(projected[k], sg2.advance(u, 1, 3)[k])  # G1(u)
        else:  # W+ rows and noises G1 only carries: the solution's own values
            assert torch.equal(projected[k], solution[k]), k
    # Entries not free in the earlier stage did not move.
    assert torch.equal(u["skip"], start["skip"]) and torch.equal(u["noise_5"], start["noise_5"])


def test_range_projection_keeps_the_earlier_variables_in_their_ball(dcgan: DCGANGenerator) -> None:
    z0 = dcgan.init_variables(2, torch.Generator().manual_seed(0))["h"]
    project_sphere_(z0, (1, 2, 3))
    target = dcgan.advance(dcgan.init_variables(2, torch.Generator().manual_seed(1)), 0, 1)
    radius = 3.0
    feasible = FeasibleSet(["h"], balls={"h": (z0.clone(), radius)}, spheres={"h": (1, 2, 3)})
    _, u = project_to_range(dcgan, {"h": z0.clone()}, 0, feasible, target, 1, steps=40, lr=0.1)
    dist = (u["h"] - z0).abs().flatten(1).sum(1)
    assert (dist <= radius * (1 + 1e-5)).all(), dist
    assert (dist > 0.5 * radius).all(), "the search did not move (the target is far outside the ball)"
    unconstrained, _ = project_to_range(dcgan, {"h": z0.clone()}, 0, FeasibleSet(["h"]), target, 1, steps=40, lr=0.1)
    assert not torch.allclose(unconstrained["h"], dcgan.advance(u, 0, 1)["h"])


def test_range_projection_at_one_split_is_the_exact_ball_projection(dcgan: DCGANGenerator) -> None:
    from ilo_pl.projections import project_l1_ball

    gen = torch.Generator().manual_seed(2)
    anchor = dcgan.advance(dcgan.init_variables(2, gen), 0, 2)
    target = dcgan.advance(dcgan.init_variables(2, gen), 0, 2)
    radius = 40.0
    feasible = FeasibleSet(["h"], balls={"h": (anchor["h"], radius)})
    projected, _ = project_to_range(dcgan, anchor, 2, feasible, target, 2)
    want = anchor["h"] + project_l1_ball((target["h"] - anchor["h"]).flatten(1), radius).view_as(anchor["h"])
    torch.testing.assert_close(projected["h"], want, rtol=0, atol=1e-5)
    assert ((target["h"] - anchor["h"]).abs().flatten(1).sum(1) > 2 * radius).all()  # it really moved


# ---------------------------------------------------------------------- project_to_range (in a solve)
def test_projection_in_a_solve_keeps_the_stage_s_latent_rows_and_noises(sg2: StyleGAN2Generator) -> None:
    """Stage 1's optimised W+ rows and noises survive the projection before stage 2."""
    with torch.no_grad():
        x = sg2.render(sg2.init_variables(1, torch.Generator().manual_seed(9)), 0)
    op = BoxMask([4, 10, 4, 12]).build(sg2.image_shape, seed=0)
    y = op(x)
    s0 = Stage(0, 4, lr=0.05, free=["latent", "noise_0", "noise_1"])
    s1 = Stage(1, 4, lr=0.05, free=["latent", "state", "noise_1", "noise_2", "noise_3", "noise_4"],
               radius={"state": 50.0})
    # Stage 2 frees only the activation, with a negligible step: its result carries
    # exactly the W+ rows and noises it started from.
    s2 = Stage(3, 1, lr=1e-9, free=["state"], radius={"state": 1.0})
    kw = dict(selection="last", trainer_kwargs=_quiet())
    two = solve(sg2, op, y, [s0, s1], **kw).solutions[0]
    three = solve(sg2, op, y, [s0, s1, s2], project_to_range=True, range_steps=5, **kw).solutions[0]
    assert (two.split, three.split) == (1, 3)
    torch.testing.assert_close(three.state["latent"], two.state["latent"][:, 2:], rtol=0, atol=0)
    for j in range(3, sg2.num_layers):
        assert torch.equal(three.state[f"noise_{j}"], two.state[f"noise_{j}"]), j


# ---------------------------------------------------------------------- sphere-feasible starts
def test_sphere_start_is_the_stage_anchor(sg2: StyleGAN2Generator) -> None:
    """With ``sphere``, stage 0 starts on the spheres: its l1 ball is not spent by the first projection."""
    gen = StyleGAN2Generator(checkpoint=TINY, latent_space="gaussian_fit", gaussian_fit_samples=2000)
    with torch.no_grad():
        x = gen.render(gen.init_variables(1, torch.Generator().manual_seed(9)), 0)
    op = BoxMask([4, 10, 4, 12]).build(gen.image_shape, seed=0)
    radius = 5.0  # well below the ~0.7%-per-entry move from a raw draw onto the sphere
    stage = Stage(0, 1, lr=1e-7, free=["latent"], radius={"latent": radius})
    result = solve(gen, op, op(x), [stage], sphere=True, selection="last", trainer_kwargs=_quiet())
    raw = gen.init_variables(1, torch.Generator().manual_seed(0))["latent"]
    on_sphere = raw.clone()
    project_sphere_(on_sphere, (2,))
    assert float((raw - on_sphere).abs().sum()) > 4 * radius  # the old anchor was far off the sphere
    got = result.solutions[0].state["latent"]
    torch.testing.assert_close(got.norm(dim=2), torch.full(got.shape[:2], math.sqrt(gen.style_dim)), rtol=1e-5, atol=0)
    assert float((got - on_sphere).abs().sum()) < 0.05


# ---------------------------------------------------------------------- 16-mixed batch isolation
class _PoisonSample0(torch.autograd.Function):
    """Forward: a zero loss per sample; backward: ``value`` in sample 0's gradient rows, zeros elsewhere."""

    @staticmethod
    def forward(ctx, image: torch.Tensor, value: float) -> torch.Tensor:  # noqa: ANN001
        ctx.shape, ctx.value = image.shape, value
        return image.new_zeros(image.shape[0], dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        out = grad.new_zeros(ctx.shape)
        out[0] = ctx.value
        return out, None


class PoisonedGradient(LossTerm):
    """A finite (zero) loss whose gradient is ``value`` (NaN, inf) for sample 0 in its first ``steps`` backward passes."""

    def __init__(self, value: float = float("nan"), steps: float = math.inf) -> None:
        super().__init__()
        self.value, self.steps, self.calls = value, steps, 0

    def forward(self, ctx: LossContext) -> torch.Tensor:
        self.calls += 1
        return _PoisonSample0.apply(ctx.image, self.value if self.calls <= self.steps else 0.0)


def _mixed_trainer(scaler: torch.amp.GradScaler) -> Dict[str, Any]:
    from pytorch_lightning.plugins.precision import MixedPrecision

    return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=scaler)], **_quiet()}


@pytest.mark.parametrize("host_reads", [True, False], ids=["cpu-host-reads", "device-no-reads"])
def test_16_mixed_nan_gradient_does_not_freeze_batch_mates(dcgan: DCGANGenerator, box_problem, host_reads) -> None:
    with host_reads_policy(host_reads):  # False: the accelerator branch (no host reads), forced on the CPU
        _check_16_mixed_nan_gradient(dcgan, box_problem)


def _check_16_mixed_nan_gradient(dcgan: DCGANGenerator, box_problem) -> None:  # noqa: ANN001
    op, y = box_problem
    steps = OVERFLOW_PATIENCE + 40
    losses = {"mse": MeasurementLoss(), "poison": PoisonedGradient(float("nan"))}
    scalers = [torch.amp.GradScaler("cpu") for _ in range(3)]
    both = solve(dcgan, op, y, [Stage(0, steps, lr=0.05)], losses=losses, loss_weights={"mse": 1.0, "poison": 1.0},
                 seeds=[0, 1], trainer_kwargs=_mixed_trainer(scalers[0]))
    alone = solve(dcgan, op, y[1:2], [Stage(0, steps, lr=0.05)], seeds=[1], trainer_kwargs=_mixed_trainer(scalers[1]))
    start = solve(dcgan, op, y[1:2], [Stage(0, 1, lr=1e-9)], seeds=[1], trainer_kwargs=_mixed_trainer(scalers[2]))
    # The batch-mate went on as if alone (float16 rounding aside), far from where it started.
    # (While the failing sample looks like an overflow, the scale halves: the batch-mate's float16
    # gradients round differently for those steps, so "as if alone" holds to ~0.3%, not exactly.)
    assert float(both.measurement_loss[1]) == pytest.approx(float(alone.measurement_loss[0]), rel=1e-2)
    assert float(alone.measurement_loss[0]) < 0.5 * float(start.measurement_loss[0])
    assert both.failed[1] is None
    # Flagged, at the step its non-finite gradients began; the scale its batch-mate ran at
    # ends where it would have without it (the back-offs the failing sample caused are undone).
    assert both.failed[0] is not None and "non-finite" in both.failed[0] and "step 0;" in both.failed[0]
    assert scalers[0].get_scale() == scalers[1].get_scale()


def test_16_mixed_overflow_backs_the_scale_off_without_failing(dcgan: DCGANGenerator, box_problem) -> None:
    """A short burst of non-finite gradients (an fp16 overflow) is no failure; the scale backs off once per step."""

    op, y = box_problem
    scaler = torch.amp.GradScaler("cpu", growth_interval=10**6)
    losses = {"mse": MeasurementLoss(), "burst": PoisonedGradient(float("inf"), steps=3)}  # sample 0 overflows 3 steps
    result = solve(dcgan, op, y, [Stage(0, 10, lr=0.05)], losses=losses, loss_weights={"mse": 1.0, "burst": 1.0},
                   trainer_kwargs=_mixed_trainer(scaler))
    assert result.failed == [None, None]
    assert scaler.get_scale() == 2.0**16 * 0.5**3


# ---------------------------------------------------------------------- the projected record
class _ProjectedRecordCheck(pl.Callback):
    """When stage 2 runs, stage 1's (projected) record must render to its image and have its loss."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if pl_module.stage_index != 2 or self.checked:
            return
        rec = pl_module.tracker.records[1]  # the record Algorithm 1's projection rewrote
        with torch.no_grad():
            img = pl_module.generator.render(rec["state"], pl_module.stages[1].split).float()
            err = batch.operator.measurement_error(batch.operator.A(img), batch.observation)
        assert torch.equal(img, rec["image"])
        torch.testing.assert_close(err.float(), rec["loss"], rtol=1e-6, atol=0)
        self.checked += 1


def test_projected_record_renders_its_image_and_loss(dcgan, box_problem) -> None:
    op, y = box_problem
    check = _ProjectedRecordCheck()
    stages = [Stage(0, 10), Stage(1, 10, lr=0.05, radius={"state": 500.0}), Stage(2, 2, lr=1e-6, radius={"state": 300.0})]
    solve(dcgan, op, y, stages, project_to_range=True, range_steps=20, callbacks=[check], trainer_kwargs=_quiet())
    assert check.checked == 1


# ---------------------------------------------------------------------- what the writer saves
@pytest.mark.parametrize("selection", ["best", "last"])
@pytest.mark.parametrize("ptr", [False, True])
def test_saved_solution_regenerates_saved_png_and_csv_loss(dcgan, box_problem, tmp_path, selection: str, ptr: bool) -> None:
    """Through the ResultWriter: the solution file renders to the PNG, and the CSV's loss is its loss."""
    import csv

    import numpy as np
    from PIL import Image

    from ilo_pl.callbacks.writer import ResultWriter
    from ilo_pl.io import to_uint8
    from ilo_pl.solutions import regenerate

    op, y = box_problem
    stages = [Stage(0, 12), Stage(1, 6, lr=0.05, radius={"state": 500.0}), Stage(2, 2, lr=1e-6, radius={"state": 300.0})]
    writer = ResultWriter(output_dir=tmp_path)
    solve(dcgan, op, y, stages, ids=["a", "b"], project_to_range=ptr, range_steps=10, selection=selection,
          callbacks=[writer], trainer_kwargs=_quiet())
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = {r["id"]: r for r in csv.DictReader(open(run / "results.csv"))}
    for b, pid in enumerate(["a", "b"]):
        img = regenerate(run / f"{pid}_solution.pt", dcgan)
        png = np.asarray(Image.open(run / f"{pid}_reconstruction.png").convert("RGB"))
        assert np.array_equal(to_uint8(img[0]), png), pid
        with torch.no_grad():
            loss = op.measurement_error(op.A(img), y[b : b + 1])
        assert float(rows[pid]["measurement_loss"]) == pytest.approx(float(loss), rel=1e-5), pid
