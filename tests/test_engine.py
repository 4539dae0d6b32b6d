"""The ILO engine: split protocol, stages, projections firing, batching, theory checks."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_lightning as pl
import torch

from ilo_pl.api import default_trainer_kwargs, solve
from ilo_pl.callbacks import L1BallProjection, SphereProjection, StageTransition
from ilo_pl.projections import project_l1_ball_sort
from ilo_pl.data import GeneratorSamples, InverseProblemDataModule, draw_from_generator
from ilo_pl.metrics import image_metrics
from ilo_pl.modules import ILOModule
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.operators import BoxMask, Identity, Inpainting, RandomMask
from ilo_pl.policy import host_reads as host_reads_policy
from ilo_pl.modules.sna import NoiseDraws
from ilo_pl.stages import Stage, ramp_lr
from ilo_pl.modules.tracking import BestIterate


@pytest.fixture(scope="module")
def gen() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator()


def _stages(steps=(4, 3, 3), radii=(200.0, 100.0)):
    out = [Stage(split=0, steps=steps[0], lr=0.1, free=["latent"])]
    for i, (s, r) in enumerate(zip(steps[1:], radii), start=1):
        out.append(Stage(split=i, steps=s, lr=0.1, free=["state"], radius={"state": r}))
    return out


# -- split protocol -----------------------------------------------------------------
def test_stage_validation(gen):
    with pytest.raises(ValueError, match="at least one step"):
        Stage(split=0, steps=0)
    with pytest.raises(ValueError, match="split points 0..4"):
        ILOModule(gen, [Stage(split=7, steps=1)])
    with pytest.raises(ValueError, match="splits must not decrease"):
        ILOModule(gen, [Stage(split=2, steps=1), Stage(split=1, steps=1)])
    with pytest.raises(ValueError, match=r"not in `losses`"):
        ILOModule(gen, [Stage(split=0, steps=1)], loss_weights={"lpips": 1.0})
    with pytest.raises(TypeError, match="SplitGenerator"):
        ILOModule(torch.nn.Linear(2, 2), [Stage(split=0, steps=1)])


def test_ramp_schedule():
    assert ramp_lr(0.0) == 0.0 and ramp_lr(1.0) == 0.0
    assert ramp_lr(0.5) == pytest.approx(1.0)
    assert 0 < ramp_lr(0.02) < 1 and 0 < ramp_lr(0.9) < 1
    assert ramp_lr(0.9) == pytest.approx(0.5 - 0.5 * math.cos(0.4 * math.pi))


# -- the loop with a real Trainer -----------------------------------------------------------
class _Probe(pl.Callback):
    """Checks invariants at every real optimizer step."""

    def __init__(self) -> None:
        self.steps = 0
        self.violations = []
        self.param_sets = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps += 1
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.param_sets.append(in_opt == {id(p) for p in pl_module.variables.values()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for p, anchor, r in pl_module.l1_constraints():
            dev = (p.detach() - anchor).flatten(1).abs().sum(1)
            if (dev > r * (1 + 1e-5) + 1e-4).any():
                self.violations.append((pl_module.stage_index, dev.max().item(), r))


def _fit(gen, stages, n=2, batch_size=2, accumulate=1, operator=None, **module_kw):
    module = ILOModule(gen, stages, **module_kw)
    dm = InverseProblemDataModule(operator or BoxMask([38, 55, 14, 49]), data=GeneratorSamples(num=n, split=2), batch_size=batch_size)
    probe = _Probe()
    kw = default_trainer_kwargs()
    kw.update(callbacks=[probe], accumulate_grad_batches=accumulate)
    trainer = pl.Trainer(**kw)
    trainer.fit(module, datamodule=dm)
    return trainer, module, probe


def test_projection_fires_once_per_real_step_with_accumulation(gen):
    stages = _stages(steps=(3, 2, 2))
    trainer, module, probe = _fit(gen, stages, n=2, batch_size=2, accumulate=2)
    proj = next(c for c in trainer.callbacks if isinstance(c, L1BallProjection))
    trans = next(c for c in trainer.callbacks if isinstance(c, StageTransition))
    assert probe.steps == sum(s.steps for s in stages)  # accumulation: 2 batches per step
    assert proj.calls == probe.steps
    assert trans.rebuilds == len(stages)  # one per stage begun (stage 0 included)
    assert all(probe.param_sets), "the optimizer must hold exactly the current variables"
    assert not probe.violations


def test_constraints_hold_and_optimizer_tracks_variables_over_problems(gen):
    stages = _stages(steps=(3, 3, 3), radii=(5.0, 2.0))  # tight balls: projections are active
    trainer, module, probe = _fit(gen, stages, n=3, batch_size=2)
    trans = next(c for c in trainer.callbacks if isinstance(c, StageTransition))
    assert trans.rebuilds == 2 * len(stages)  # two problem batches (2 + 1 problems)
    assert all(probe.param_sets)
    assert not probe.violations
    assert module.last_result is not None and len(module.last_result.batch) == 1


def test_optimizer_entry_is_detected(gen):
    """An optimizer over other parameters than the stage's variables (LightningCLI's `optimizer:`
    entry is built once, over the parameters the module had at setup) is refused at the first rebuild."""
    stale = torch.nn.Parameter(torch.zeros(1))

    class Sneaky(ILOModule):
        def configure_optimizers(self):
            return torch.optim.SGD([stale], lr=0.1)

    module = Sneaky(gen, _stages())
    dm = InverseProblemDataModule(BoxMask([38, 55, 14, 49]), data=GeneratorSamples(num=1))
    trainer = pl.Trainer(**default_trainer_kwargs())
    with pytest.raises(RuntimeError, match="does not optimise exactly the module's current variables"):
        trainer.fit(module, datamodule=dm)


def test_own_optimizer_over_exactly_the_variables_is_allowed(gen):
    """A subclass may build another optimizer, as long as it holds exactly the stage's variables."""

    class WithSGD(ILOModule):
        def configure_optimizers(self):
            return torch.optim.SGD(list(self.variables.values()) or [torch.nn.Parameter(torch.zeros(1))], lr=0.01)

    module = WithSGD(gen, _stages(steps=(2, 2, 2)))
    dm = InverseProblemDataModule(BoxMask([38, 55, 14, 49]), data=GeneratorSamples(num=1))
    pl.Trainer(**default_trainer_kwargs()).fit(module, datamodule=dm)
    assert module.last_result is not None


@pytest.mark.parametrize(
    "callback, missing",
    [
        (L1BallProjection(), "l1_constraints"),
        (SphereProjection(), "sphere_constraints"),
        (StageTransition(), "stage_due"),
    ],
)
def test_callbacks_refuse_a_module_without_their_protocol(callback, missing):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return self.w.sum()

        def configure_optimizers(self):
            return torch.optim.SGD([self.w], lr=0.1)

    loader = torch.utils.data.DataLoader([torch.zeros(1)])
    trainer = pl.Trainer(callbacks=[callback], **{**default_trainer_kwargs(), "max_steps": 1})
    with pytest.raises(TypeError, match=f"{type(callback).__name__} needs .*lacks .*{missing}"):
        trainer.fit(Plain(), train_dataloaders=loader)


def test_result_writer_refuses_a_module_without_last_result(tmp_path):
    from ilo_pl.callbacks import ResultWriter
    from ilo_pl.callbacks.protocols import ResultProducing, require

    with pytest.raises(TypeError, match="ResultWriter needs .*ResultProducing.*last_result"):
        require(pl.LightningModule(), ResultProducing, ResultWriter(output_dir=tmp_path))
    assert not any(tmp_path.iterdir())  # nothing made


def test_range_projection_without_the_method_is_refused(gen):
    class NoRange(pl.LightningModule):
        def stage_due(self, batch):
            return None

        def begin_stage(self, batch, index):
            pass

    with pytest.raises(TypeError, match="RangeProjecting.*project_to_range"):
        StageTransition(project_to_range=True).setup(None, NoRange(), "fit")
    StageTransition().setup(None, NoRange(), "fit")  # without projection it is enough


# -- batching ---------------------------------------------------------------------------------------
def test_batch_equals_per_sample(gen):
    g = torch.Generator().manual_seed(3)
    x = torch.cat([draw_from_generator(gen, g, split=2) for _ in range(2)])
    ops = [RandomMask(0.3).build(gen.image_shape, s) for s in (11, 12)]
    op = Inpainting.stack(ops)
    y = op(x)
    stages = _stages(steps=(5, 4, 4))
    both = solve(gen, op, y, stages, seeds=[5, 6])
    for b in range(2):
        alone = solve(gen, ops[b], y[b : b + 1], stages, seeds=[5 + b])
        assert torch.allclose(both.images[b], alone.images[0], atol=1e-4), b
        assert torch.allclose(both.measurement_loss[b], alone.measurement_loss[0], rtol=1e-3)


def test_sna_is_reproducible_and_independent_of_batch_mates(gen):
    """SNA noise comes from one stream per problem: same result alone or batched, run after run."""
    from ilo_pl.operators import GaussianNoise

    g = torch.Generator().manual_seed(13)
    x = torch.cat([draw_from_generator(gen, g, split=0) for _ in range(2)])
    op = GaussianNoise(50.0)
    y = op(x, torch.Generator().manual_seed(2))
    stages = _stages(steps=(4, 3, 3))
    torch.manual_seed(0)
    both = solve(gen, op, y, stages, seeds=[5, 6], sna=True, sna_samples=4)
    torch.manual_seed(123)  # the global RNG plays no part
    again = solve(gen, op, y, stages, seeds=[5, 6], sna=True, sna_samples=4)
    assert torch.equal(both.images, again.images)
    for b in range(2):
        alone = solve(gen, op, y[b : b + 1], stages, seeds=[5 + b], sna=True, sna_samples=4)
        assert torch.allclose(both.images[b], alone.images[0], atol=1e-4), b
    other_seed = solve(gen, op, y[:1], stages, seeds=[7], sna=True, sna_samples=4)
    assert not torch.equal(other_seed.images[0], both.images[0])


def test_best_iterate_is_returned(gen):
    g = torch.Generator().manual_seed(4)
    x = draw_from_generator(gen, g, split=0)
    op = Identity()
    res = solve(gen, op, x, _stages(steps=(6, 4, 4)))
    # the returned image's measurement error is the best one recorded over all stages
    err = (res.images - x).pow(2).mean()
    assert err.item() == pytest.approx(res.measurement_loss[0].item(), rel=1e-4)
    assert res.measurement_loss[0] <= min(s[0] for s in res.stage_losses) + 1e-12
    sol = res.solutions[0]
    assert torch.allclose(gen.render(sol.state, sol.split), res.images, atol=1e-6)


@pytest.mark.parametrize("host_reads", [True, False], ids=["cpu-host-reads", "device-path"])
def test_best_iterate_tracking_matches_brute_force(gen, host_reads, monkeypatch):
    """Each sample's result is its lowest-error iterate over every step of every stage.

    A large learning rate makes the errors go up and down, at different steps
    for the two samples, so all three cases of the tracking run: every sample
    improves, none does, some do. ``device-path`` runs the bookkeeping an
    accelerator uses (no host reads) on the CPU.
    """
    seen, trackers = [], []
    update = BestIterate.update

    def recording(self, image, err, per_sample, state, names, step):  # noqa: ANN001, ANN202
        trackers[:] = [self]
        names = list(names)
        seen.append((self.stage, err.detach().clone(), {k: state[k].detach().clone() for k in names}))
        return update(self, image, err, per_sample, state, names, step)

    monkeypatch.setattr(BestIterate, "update", recording)
    g = torch.Generator().manual_seed(8)
    x = torch.cat([draw_from_generator(gen, g, split=0) for _ in range(2)])
    op = Inpainting.stack([RandomMask(0.5).build(gen.image_shape, s) for s in (3, 4)])
    stages = [Stage(split=0, steps=8, lr=0.6, free=["latent"]),
              Stage(split=2, steps=8, lr=0.6, free=["state"], radius={"state": 300.0})]
    with host_reads_policy(host_reads):
        res = solve(gen, op, op(x), stages)
    errs = torch.stack([e for _, e, _ in seen])  # [steps, B]
    # Steps where both, none, or one of the samples beat its best so far in the stage.
    kinds, best = set(), None
    for i, (stage, e, _) in enumerate(seen):
        if i == 0 or stage != seen[i - 1][0]:
            best = torch.full_like(e, math.inf)
        better = e < best
        kinds.add(int(better.sum()))
        best = torch.minimum(best, e)
    assert kinds == {0, 1, 2}, f"this problem should exercise every case of the tracking; got {kinds}"
    # every stage's best iterate (the start of the next stage, and a candidate result)
    stage_of = torch.tensor([st for st, _, _ in seen])
    assert trackers[0].host_reads is host_reads
    for s_idx, tracked in enumerate(trackers[0].records):
        rows = (stage_of == s_idx).nonzero().flatten()
        for b in range(2):
            t = int(rows[errs[rows, b].argmin()])
            assert tracked["loss"][b] == errs[t, b]
            for k in seen[t][2]:
                assert torch.equal(tracked["state"][k][b], seen[t][2][k][b]), (s_idx, b, k)
    for b in range(2):
        t = int(errs[:, b].argmin())
        stage, _, state = seen[t]
        assert res.measurement_loss[b] == errs[t, b]
        assert res.solutions[b].stage == stage
        for k, v in res.solutions[b].state.items():
            assert torch.equal(v, state[k][b : b + 1]), (b, k)


def test_solve_rejects_mismatched_observation(gen):
    op = BoxMask([0, 3, 0, 3]).build(gen.image_shape, 0)
    with pytest.raises(ValueError, match="NaN or inf"):
        solve(gen, op, torch.full((1, 3, 64, 64), float("nan")), _stages())
    with pytest.raises(ValueError, match=r"produces measurements of shape \(1, 3, 64, 64\)"):
        solve(gen, op, torch.zeros(1, 3, 32, 32), _stages())


# -- theory checks (the paper's claims on generator-drawn images) -----------------------------------------
def test_in_range_image_fully_observed_psnr_above_35(gen):
    x = draw_from_generator(gen, torch.Generator().manual_seed(21), split=0)
    stages = [
        Stage(split=0, steps=150, lr=0.1, free=["latent"]),
        Stage(split=2, steps=100, lr=0.1, free=["state"], radius={"state": 2000.0}),
        Stage(split=4, steps=100, lr=0.05, free=["state"], radius={"state": 2000.0}),
    ]
    res = solve(gen, Identity(), x, stages, target=x)
    psnr = image_metrics(res.images, x)["psnr"].item()
    assert psnr > 35.0, psnr


def test_out_of_range_ilo_beats_csgm_by_2x(gen):
    g = torch.Generator().manual_seed(7)
    x = torch.cat([draw_from_generator(gen, g, split=2, sparsity=0.01, magnitude=6.0) for _ in range(2)])
    op = Inpainting.stack([RandomMask(0.5).build(gen.image_shape, s) for s in (1, 2)])
    y = op(x)
    ilo = [
        Stage(split=0, steps=150, lr=0.1, free=["latent"]),
        Stage(split=1, steps=75, lr=0.1, free=["state"], radius={"state": 300.0}),
        Stage(split=2, steps=75, lr=0.1, free=["state"], radius={"state": 300.0}),
    ]
    csgm = [Stage(split=0, steps=300, lr=0.1, free=["latent"])]
    r_ilo = solve(gen, op, y, ilo, target=x)
    r_csgm = solve(gen, op, y, csgm, target=x)
    mse_ilo = image_metrics(r_ilo.images, x)["true_mse"].mean().item()
    mse_csgm = image_metrics(r_csgm.images, x)["true_mse"].mean().item()
    assert mse_ilo <= 0.5 * mse_csgm, (mse_ilo, mse_csgm)


def test_selection_last_returns_the_final_stage_iterate(gen):
    x = draw_from_generator(gen, torch.Generator().manual_seed(8), split=0)
    res = solve(gen, Identity(), x, _stages(steps=(4, 3, 3)), selection="last")
    assert res.solutions[0].stage == 2
    assert res.measurement_loss[0] == res.stage_losses[-1][0]
    with pytest.raises(ValueError, match="selection must be 'best' or 'last'"):
        ILOModule(gen, _stages(), selection="median")


def test_per_stage_sna_overrides_the_module_switch(gen):
    from ilo_pl.operators import GaussianNoise

    x = draw_from_generator(gen, torch.Generator().manual_seed(9), split=0)
    op = GaussianNoise(25.0)
    y = op(x, torch.Generator().manual_seed(1))
    plain = solve(gen, op, y, _stages(steps=(4, 3, 3)))
    off_by_stage = solve(gen, op, y, [Stage(**{**s.__dict__, "sna": False}) for s in _stages(steps=(4, 3, 3))], sna=True)
    on = solve(gen, op, y, _stages(steps=(4, 3, 3)), sna=True)
    assert torch.equal(plain.images, off_by_stage.images)
    assert not torch.equal(plain.images, on.images)


def test_sna_mean_of_draws_is_minimised_at_the_truth(gen):
    """Under clipped noise, the averaged SNA loss is minimised at the truth; one draw and plain MSE are biased.

    A dark pixel x = -0.7 at sigma 100: plain MSE against y = clip(x + n) is
    minimised at E[y] (pulled to mid-grey), the single-draw SNA loss past x
    (towards the clipping bound), the mean of 16 draws at x.
    """
    from ilo_pl.operators import GaussianNoise

    op, x, n = GaussianNoise(100.0), -0.7, 100000
    torch.manual_seed(0)
    y = op.noise(torch.full((1, 1, 1, n), x))
    grid = torch.linspace(-1.0, -0.45, 56)  # steps of 0.01
    image = grid.view(-1, 1, 1, 1).expand(-1, 1, 1, n)

    def argmin(loss):
        return float(grid[loss.argmin()])

    plain = argmin((image - y).pow(2).mean((1, 2, 3)))
    est = {}
    for k in (1, 16):
        draws = NoiseDraws(k)
        # (streams apart from the global seed 0 that made y: shared noise would fake a fit)
        draws.generators = [torch.Generator().manual_seed(1000 + i) for i in range(len(grid))]
        est[k] = argmin((draws.measure(op, image) - y).pow(2).mean((1, 2, 3)))
    # Exact minimisers (closed form): K=16 -0.724 (residual pull Var(clip(g + n)) / 16),
    # K=1 -1.0 (the bound), plain MSE E[clip(x + n)] = -0.519; the rest is Monte Carlo error.
    assert abs(est[16] - x) <= 0.06, est
    assert est[1] <= x - 0.25, est
    assert plain >= x + 0.12, plain


def test_sna_samples_average_fresh_draws(gen):
    from ilo_pl.operators import GaussianNoise

    op = GaussianNoise(50.0, clip=False)
    image = torch.zeros(2, 3, 8, 8)
    one, many = NoiseDraws(1), NoiseDraws(16)
    one.generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    many.generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    a = one.measure(op, image)
    # one draw is the paper's SNA, op.noise(A(x)), from each problem's own stream
    for b, s in enumerate((3, 4)):
        assert torch.equal(a[b : b + 1], op.noise(op.A(image[b : b + 1]), torch.Generator().manual_seed(s)))
    spread = torch.stack([many.measure(op, image) for _ in range(20)]).std()
    assert abs(float(spread) / op.std - 0.25) < 0.03  # std of a mean of 16 draws: std / 4
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(ValueError, match="sna_samples must be an integer >= 1"):
            ILOModule(gen, _stages(), sna=True, sna_samples=bad)


@pytest.mark.parametrize("host_read", [True, False])  # False: the accelerator path (no host sync)
@pytest.mark.parametrize("pattern", [(1, 1, 1), (0, 0, 0), (1, 0, 1)])
def test_copy_rows_is_an_exact_masked_copy(host_read, pattern):
    from ilo_pl.modules.tracking import copy_rows_

    g = torch.Generator().manual_seed(4)
    dst, src = torch.randn(3, 2, 5, 5, generator=g), torch.randn(3, 2, 5, 5, generator=g)
    rows = torch.tensor(pattern, dtype=torch.bool)
    want = torch.where(rows.view(-1, 1, 1, 1), src, dst)
    ptr = dst.data_ptr()
    copy_rows_(dst, src, rows, host_read)
    assert torch.equal(dst, want) and dst.data_ptr() == ptr  # in place


def test_projection_hook_skips_steps_a_grad_scaler_skips():
    """A step a mixed-precision GradScaler skips (inf gradients) projects nothing."""
    from types import SimpleNamespace

    param = torch.nn.Parameter(torch.full((1, 8), 10.0))
    anchor = torch.zeros(1, 8)
    class Module:  # the protocol's one method
        def l1_constraints(self):
            return [(param, anchor, 1.0)]

    module = Module()
    opt = torch.optim.SGD([param], lr=0.0)
    cb = L1BallProjection()
    cb._attach(SimpleNamespace(optimizers=[opt]), module)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    loss = (param * float("inf")).sum()
    scaler.scale(loss).backward()
    scaler.step(opt)  # inf gradient: skipped, the hook must not fire
    scaler.update()
    assert cb.calls == 0 and torch.equal(param.detach(), torch.full((1, 8), 10.0))
    opt.zero_grad()
    scaler.scale(param.sum()).backward()
    scaler.step(opt)  # a real step: projected once
    assert cb.calls == 1
    assert param.detach().abs().sum().item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("host_reads", [None, True, False])
def test_l1_projection_callback_host_reads_choice(host_reads):
    """Default: host reads for CPU tensors (kernel, raising on NaN); ``False``: the read-free path, same result."""
    g = torch.Generator().manual_seed(3)
    param = torch.nn.Parameter(torch.randn(3, 40, generator=g) * 5)
    anchor = torch.zeros(3, 40)
    want = anchor + project_l1_ball_sort(param.detach(), torch.tensor([1.0, 2.0, 1e6]))

    class Module:  # the protocol's one method
        def l1_constraints(self):
            return [(param, anchor, torch.tensor([1.0, 2.0, 1e6]))]

    cb = L1BallProjection(host_reads=host_reads)
    cb.project(Module())
    (ws,) = cb._workspaces.values()
    assert ws.host_reads is (True if host_reads is None else host_reads)  # a CPU tensor
    torch.testing.assert_close(param.detach(), want, rtol=1e-5, atol=1e-6)


def test_configure_callbacks_adds_the_sphere_projection_only_with_sphere_constraints(gen):
    stages = _stages()
    plain = [type(c) for c in ILOModule(gen, stages).configure_callbacks()]
    assert plain == [StageTransition, L1BallProjection]
    with_sphere = [type(c) for c in ILOModule(gen, stages, sphere=True).configure_callbacks()]
    assert with_sphere == [StageTransition, SphereProjection, L1BallProjection]


def test_true_mse_is_clamped_like_psnr_ssim_and_the_pngs():
    """All three metrics see the images as the PNGs store them: clamped to [-1, 1]."""
    target = torch.full((2, 3, 16, 16), 1.0)
    pred = target.clone()
    pred[0] = 1.5  # outside the range: the PNG shows 1.0, exactly the target
    pred[1, :, :8] = 0.0  # inside: an ordinary error
    m = image_metrics(pred, target)
    assert m["true_mse"][0].item() == 0.0  # unclamped it was 0.25
    assert m["true_mse"][1].item() == pytest.approx(0.5)
    assert math.isinf(m["psnr"][0].item()) or m["psnr"][0].item() > 80  # the same (perfect) image for PSNR
    # consistent with PSNR on the [0, 1] scale: mse01 = true_mse / 4
    assert m["psnr"][1].item() == pytest.approx(-10 * math.log10(0.5 / 4), rel=1e-5)


def test_l1_projection_callback_refuses_a_parameter_without_a_batch_dimension():
    param = torch.nn.Parameter(torch.full((8,), 10.0))

    class Module:  # a [n] parameter: one sample, or n samples of one entry?
        def l1_constraints(self):
            return [(param, torch.zeros(8), 1.0)]

    with pytest.raises(ValueError, match=r"shape \(8,\); it must be \[B, \.\.\.\] .*param\[None\]"):
        L1BallProjection().project(Module())
    assert torch.equal(param.detach(), torch.full((8,), 10.0))  # untouched


class _TwoStageToy(pl.LightningModule):
    """A latent-optimisation module outside ilo-pl: two stages of 4 steps, each a new variable in an l1 ball."""

    def __init__(self) -> None:
        super().__init__()
        self.variable = torch.nn.Parameter(torch.zeros(1, 16))
        self.anchor = torch.zeros(1, 16)
        self.stage, self.steps, self.distances = -1, 0, []

    def stage_due(self, batch):  # noqa: ANN001, ANN201
        return self.stage + 1 if self.steps % 4 == 0 and self.stage < 1 else None

    def begin_stage(self, batch, index):  # noqa: ANN001, ANN201
        self.stage = index
        self.variable = torch.nn.Parameter(torch.full((1, 16), float(index)))
        self.anchor = self.variable.detach().clone()

    def l1_constraints(self):  # noqa: ANN201
        return [(self.variable, self.anchor, 1.0)]

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.steps += 1
        return -(self.variable * 10.0).sum()  # pushes every entry outwards: every step leaves the ball

    def on_train_batch_end(self, *args) -> None:  # noqa: ANN002
        self.distances.append(float((self.variable.detach() - self.anchor).abs().sum()))

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD([self.variable], lr=1.0)


@pytest.mark.parametrize("order", ["projection_first", "stage_first"])
def test_reusable_callbacks_work_in_any_order(order):
    """Every step, the first of each stage included, is projected, whichever callback is listed first."""
    cbs = [L1BallProjection(), StageTransition()]
    if order == "stage_first":
        cbs.reverse()
    module = _TwoStageToy()
    loader = torch.utils.data.DataLoader([torch.zeros(1)] * 8, batch_size=None)
    kw = default_trainer_kwargs()
    kw.update(accelerator="cpu", callbacks=cbs, max_steps=8)
    pl.Trainer(**kw).fit(module, train_dataloaders=loader)
    assert len(module.distances) == 8
    assert all(d == pytest.approx(1.0, rel=1e-5) for d in module.distances), module.distances


class _NoVariableYetToy(_TwoStageToy):
    """Like :class:`_TwoStageToy`, but with no parameter until its first stage and no optimizer before it."""

    def __init__(self) -> None:
        super().__init__()
        del self.variable  # nothing to optimise until begin_stage

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD([self.variable], lr=1.0) if hasattr(self, "variable") else None


def test_stage_transition_needs_no_placeholder_parameter(recwarn):
    """A module may return no optimizer before its first stage: no placeholder, no 'no optimizer' warning."""
    module = _NoVariableYetToy()
    assert not list(module.parameters())
    loader = torch.utils.data.DataLoader([torch.zeros(1)] * 8, batch_size=None)
    kw = default_trainer_kwargs()
    kw.update(accelerator="cpu", callbacks=[StageTransition(), L1BallProjection()], max_steps=8)
    pl.Trainer(**kw).fit(module, train_dataloaders=loader)
    assert not [w for w in recwarn if "returned `None`" in str(w.message)]
    assert all(d == pytest.approx(1.0, rel=1e-5) for d in module.distances) and len(module.distances) == 8
    # Only that fit's first stage is silenced: afterwards Lightning's warning shows again.
    warnings.warn("`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer")
    assert [w for w in recwarn if "returned `None`" in str(w.message)]


def test_ilo_module_has_no_optimizer_before_its_first_stage():
    module = ILOModule(DCGANGenerator(), [Stage(0, 2)])
    assert module.configure_optimizers() is None


def test_stage_transition_unsilences_when_the_fit_fails_before_its_first_stage(recwarn):
    """Lightning skips teardown on an exception: the 'no optimizer' filter must not outlive the failed fit."""

    class Boom(pl.Callback):
        def on_train_start(self, trainer, pl_module):  # noqa: ANN001, ANN201
            raise RuntimeError("boom")

    loader = torch.utils.data.DataLoader([torch.zeros(1)] * 8, batch_size=None)
    kw = default_trainer_kwargs()
    kw.update(accelerator="cpu", callbacks=[StageTransition(), Boom()], max_steps=8)
    with pytest.raises(RuntimeError, match="boom"):
        pl.Trainer(**kw).fit(_NoVariableYetToy(), train_dataloaders=loader)
    warnings.warn("`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer")
    assert [w for w in recwarn if "returned `None`" in str(w.message)]
