"""Mixed precision: ``bf16-mixed`` (CPU) and ``16-mixed`` (GPU) solves.

What must hold under autocast: the generator's convolutions may run in low
precision, but the optimised variables, their l1 anchors, the projections, the
best-iterate records and StyleGAN-2's custom ops (``fused_leaky_relu``,
``upfirdn2d``) stay in float32; the result is finite and close to the float32
solve's.
"""

from __future__ import annotations

from typing import Dict, List

import pytest
import pytorch_lightning as pl
import torch

from conftest import TINY
from ilo_pl.api import solve
from ilo_pl.callbacks import L1BallProjection, SphereProjection
from ilo_pl.data import draw_from_generator
from ilo_pl.losses.base import LossContext, MeasurementLoss
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.operators import Inpainting, RandomMask
from ilo_pl.stages import Stage


class RecordingMSE(MeasurementLoss):
    """The MSE term, recording the dtypes it sees (to prove autocast was on)."""

    def __init__(self) -> None:
        super().__init__()
        self.image_dtypes: set = set()
        self.term_dtypes: set = set()

    def forward(self, ctx: LossContext) -> torch.Tensor:
        self.image_dtypes.add(ctx.image.dtype)
        out = super().forward(ctx)
        self.term_dtypes.add(out.dtype)
        return out


class Invariants(pl.Callback):
    """After every step: dtypes of variables/anchors/best records, and the constraints."""

    def __init__(self) -> None:
        self.steps = 0
        self.dtypes: set = set()
        self.l1_excess: List[float] = []
        self.sphere_error: List[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.steps += 1
        self.dtypes |= {p.dtype for p in pl_module.variables.values()}
        in_ball = set()
        for p, anchor, r in pl_module.l1_constraints():
            in_ball.add(id(p))
            self.dtypes.add(anchor.dtype)
            dev = (p.detach() - anchor).flatten(1).abs().sum(1)
            self.l1_excess.append(float((dev - r).max()))
        for p, dims in pl_module.sphere_constraints():
            if id(p) in in_ball:  # the l1 ball is projected last and wins (see callbacks/projection.py)
                continue
            n = 1
            for d in dims:
                n *= p.shape[d]
            norm = p.detach().pow(2).sum(dim=tuple(dims)).sqrt()
            self.sphere_error.append(float((norm - n**0.5).abs().max() / n**0.5))
        best = pl_module.tracker.records[-1]
        self.dtypes |= {v.dtype for v in best["state"].values()}
        self.dtypes.add(best["loss"].dtype)
        if best["image"] is not None:
            self.dtypes.add(best["image"].dtype)


def _dcgan_problem(gen: DCGANGenerator):
    g = torch.Generator().manual_seed(5)
    x = torch.cat([draw_from_generator(gen, g, split=2) for _ in range(2)])
    op = Inpainting.stack([RandomMask(0.3).build(gen.image_shape, s) for s in (1, 2)])
    return x, op, op(x)


# Tight radii: the l1 projection is active on most steps of stages 1 and 2.
DCGAN_STAGES = [
    Stage(split=0, steps=12, lr=0.1, free=["latent"]),
    Stage(split=1, steps=8, lr=0.1, free=["state"], radius={"state": 20.0}),
    Stage(split=2, steps=8, lr=0.1, free=["state"], radius={"state": 15.0}),
]


@pytest.fixture(scope="module")
def dcgan_runs() -> Dict[str, dict]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = DCGANGenerator()
    x, op, y = _dcgan_problem(gen)
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        mse, inv = RecordingMSE(), Invariants()
        res = solve(
            gen, op, y, DCGAN_STAGES, losses={"mse": mse}, sphere=True,
            trainer_kwargs={"precision": precision, "accelerator": "cpu"}, callbacks=[inv],
        )
        runs[precision] = dict(result=res, mse=mse, inv=inv)
    return runs


def test_bf16_mixed_autocast_is_active(dcgan_runs):
    # Without this the other checks could pass with autocast silently off.
    assert dcgan_runs["bf16-mixed"]["mse"].image_dtypes == {torch.bfloat16}
    assert dcgan_runs["32-true"]["mse"].image_dtypes == {torch.float32}


def test_bf16_mixed_keeps_variables_and_records_float32(dcgan_runs):
    run = dcgan_runs["bf16-mixed"]
    assert run["inv"].steps == sum(s.steps for s in DCGAN_STAGES)
    assert run["inv"].dtypes == {torch.float32}
    assert run["mse"].term_dtypes == {torch.float32}  # the loss is summed in float32
    res = run["result"]
    assert res.images.dtype == torch.float32
    assert all(v.dtype == torch.float32 for sol in res.solutions for v in sol.state.values())


def test_bf16_mixed_constraints_hold(dcgan_runs):
    inv = dcgan_runs["bf16-mixed"]["inv"]
    assert inv.l1_excess and max(inv.l1_excess) <= 1e-3  # radii 15-20: float32 rounding only
    assert inv.sphere_error and max(inv.sphere_error) <= 1e-5
    # The radii are tight enough that the projection actually ran (the ball's surface was reached).
    assert max(inv.l1_excess) >= -1e-3


def test_bf16_mixed_result_finite_and_close_to_float32(dcgan_runs):
    lo, hi = dcgan_runs["bf16-mixed"]["result"], dcgan_runs["32-true"]["result"]
    assert torch.isfinite(lo.images).all() and torch.isfinite(lo.measurement_loss).all()
    assert all(f is None for f in lo.failed)
    mse = (lo.images - hi.images).pow(2).mean().item()
    psnr = 10 * torch.log10(torch.tensor(4.0 / mse)).item()  # images span [-1, 1]
    assert psnr > 28.0, f"bf16 result differs from float32 by PSNR {psnr:.1f} dB"
    ratio = lo.measurement_loss / hi.measurement_loss
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio


def test_projection_callbacks_compute_in_float32_under_autocast():
    # The callbacks run from an optimizer hook (outside Lightning's autocast region),
    # but must stay exact in float32 even if called inside one.
    g = torch.Generator().manual_seed(0)
    anchor = torch.randn(3, 64, 4, 4, generator=g)
    param = torch.nn.Parameter(anchor + torch.randn(3, 64, 4, 4, generator=g))
    latent = torch.nn.Parameter(torch.randn(3, 100, 1, 1, generator=g) * 3)

    class Module:
        def l1_constraints(self):  # noqa: ANN202
            return [(param, anchor, 10.0)]

        def sphere_constraints(self):  # noqa: ANN202
            return [(latent, (1, 2, 3))]

    with torch.autocast("cpu", dtype=torch.bfloat16):
        SphereProjection().project(Module())
        L1BallProjection().project(Module())
    assert param.dtype == torch.float32 and latent.dtype == torch.float32
    dev = (param.detach() - anchor).flatten(1).abs().sum(1)
    assert torch.allclose(dev, torch.full((3,), 10.0), rtol=1e-5)
    assert torch.allclose(latent.detach().flatten(1).norm(dim=1), torch.full((3,), 10.0), rtol=1e-5)


# ------------------------------------------------------------------------- StyleGAN-2
@pytest.fixture(scope="module")
def sg2():
    if not TINY.is_file():
        pytest.fail(f"missing fixture {TINY}: the shared fixtures must be at ../shared/fixtures")
    from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator

    return StyleGAN2Generator.from_checkpoint(TINY, mean_latent_samples=256)


def test_geodesic_loss_is_float32_and_alive_under_autocast(device):
    # Rows almost equal (as after a Gaussian-fit initialisation): in bf16/fp16 their cosines
    # round to 1, where the angle is 0 and acos' infinite; the term must match float32.
    from ilo_pl.losses.base import GeodesicLoss

    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 512, generator=g).repeat(2, 6, 1) + 1e-3 * torch.randn(2, 6, 512, generator=g)
    w = w.to(device).requires_grad_(True)
    img = torch.zeros(2, 3, 4, 4, device=device)
    ctx = LossContext(image=img, measured=img, observation=img, operator=None, state={"latent": w},
                      groups={"latent": "latent"}, split=0, measurement_error=torch.zeros(2, device=device))
    ref = GeodesicLoss()(ctx)
    (want,) = torch.autograd.grad(ref.sum(), w)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast(device, dtype=dtype):
            got = GeodesicLoss()(ctx)
        (grad,) = torch.autograd.grad(got.sum(), w)
        assert got.dtype == torch.float32 and (got > 0).all()
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(grad, want)


def test_stylegan2_ops_compute_in_float32_under_bf16_autocast(sg2, monkeypatch):
    import ilo_pl.modules.generators.stylegan2.layers as sg2_mod
    import ilo_pl.ops.fused_act as fused_act

    calls: List[tuple] = []

    def recording(fn):  # noqa: ANN001, ANN202
        def wrapped(x, *args, **kwargs):  # noqa: ANN001, ANN202
            out = fn(x, *args, **kwargs)
            calls.append((fn.__name__, x.dtype, out.dtype))
            return out

        return wrapped

    monkeypatch.setattr(sg2_mod, "upfirdn2d", recording(sg2_mod.upfirdn2d))
    monkeypatch.setattr(sg2_mod, "fused_leaky_relu", recording(sg2_mod.fused_leaky_relu))
    monkeypatch.setattr(fused_act, "fused_leaky_relu", recording(fused_act.fused_leaky_relu))
    state = sg2.init_variables(2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = sg2.render(state, 0)
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = sg2.render(state, 0)
    names = {c[0] for c in calls}
    assert {"upfirdn2d", "fused_leaky_relu"} <= names, names
    assert all(out == torch.float32 for _, _, out in calls), calls
    # autocast did hand the ops low-precision inputs (so the check above can fail)
    assert any(inp == torch.bfloat16 for _, inp, _ in calls), calls
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1, (low.float() - ref).abs().max()


def test_stylegan2_bf16_mixed_solve_keeps_float32(sg2):
    state = sg2.init_variables(1, torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = sg2.render(state, 0)
    op = RandomMask(0.5).build(sg2.image_shape, 0)
    y = op(x)
    stages = [
        # noises: sphere only; latent and state: l1 balls (tight, so they are active)
        Stage(split=0, steps=6, lr=0.05, free=["latent", "noise"], radius={"latent": 5.0}),
        Stage(split=2, steps=6, lr=0.05, free=["latent", "state", "noise"], radius={"latent": 5.0, "state": 5.0}),
    ]
    inv = Invariants()
    res = solve(sg2, op, y, stages, sphere=True, callbacks=[inv],
                trainer_kwargs={"precision": "bf16-mixed", "accelerator": "cpu"})
    assert inv.steps == 12
    assert inv.dtypes == {torch.float32}
    assert -1e-4 <= max(inv.l1_excess) <= 1e-4  # on the surface of the balls, not beyond
    assert inv.sphere_error and max(inv.sphere_error) <= 1e-5
    assert torch.isfinite(res.images).all() and torch.isfinite(res.measurement_loss).all()


@pytest.mark.gpu
def test_16_mixed_on_gpu_keeps_float32_and_constraints():
    gen = DCGANGenerator().cuda()
    x, op, y = _dcgan_problem(DCGANGenerator())
    mse, inv = RecordingMSE(), Invariants()
    res = solve(gen, op.cuda(), y.cuda(), DCGAN_STAGES, losses={"mse": mse}, sphere=True, callbacks=[inv],
                trainer_kwargs={"precision": "16-mixed", "accelerator": "gpu"})
    assert mse.image_dtypes == {torch.float16}
    assert inv.dtypes == {torch.float32}
    assert max(inv.l1_excess) <= 1e-3 and max(inv.sphere_error) <= 1e-5
    assert torch.isfinite(res.images).all()
