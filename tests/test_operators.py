"""Tests of the linear forward operators (inpainting, denoising, SR, CS, composition)."""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from ilo_pl.operators.base import LinearOperator, Operator
from ilo_pl.operators.compose import Compose, ComposeSpec, LinearCompose, Noisy
from ilo_pl.operators.cs import CompressedSensing, GaussianMatrix, PartialCirculant
from ilo_pl.operators.inpainting import BoxMask, Inpainting, RandomMask
from ilo_pl.operators.noise import Denoising, GaussianNoise, sigma_to_std
from ilo_pl.operators.superres import (
    PADDINGS,
    BicubicDownsample,
    SuperResolution,
    bicubic_taps,
    pad_index,
    upsample_bicubic,
)

F64 = torch.float64


def _mask(h: int, w: int, c: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(1, c, h, w, generator=g) < 0.5).float()
    m[..., 0, 0] = 1  # never empty
    return m


# name -> (builder, image shape [C, H, W]); every one is linear.
LINEAR: Dict[str, Tuple[Callable[[], LinearOperator], Tuple[int, int, int]]] = {
    "inpainting": (lambda: Inpainting(_mask(6, 6)), (3, 6, 6)),
    "inpainting_rgb_mask": (lambda: Inpainting(_mask(6, 6, c=3)), (3, 6, 6)),
    "gaussian_noise": (lambda: GaussianNoise(25), (3, 6, 6)),
    "sr1": (lambda: BicubicDownsample(1), (3, 12, 12)),
    "sr2": (lambda: BicubicDownsample(2), (3, 12, 12)),
    "sr3": (lambda: BicubicDownsample(3), (2, 12, 9)),
    "sr4": (lambda: BicubicDownsample(4), (1, 8, 12)),
    "sr3_symmetric": (lambda: BicubicDownsample(3, "symmetric"), (1, 6, 9)),
    "sr2_replicate": (lambda: BicubicDownsample(2, "replicate"), (1, 6, 4)),
    "sr2_circular": (lambda: BicubicDownsample(2, "circular"), (1, 6, 4)),
    "circulant": (lambda: PartialCirculant((3, 4, 4), 20, seed=1), (3, 4, 4)),
    "circulant_odd_n": (lambda: PartialCirculant((1, 5, 7), 11, seed=2), (1, 5, 7)),
    "gaussian_matrix": (lambda: GaussianMatrix((3, 4, 4), 20, seed=1), (3, 4, 4)),
    "compose_sr_mask": (lambda: Compose(BicubicDownsample(2), Inpainting(_mask(3, 3))), (3, 6, 6)),
    "compose_sr_noise": (lambda: Compose(BicubicDownsample(2), GaussianNoise(10)), (3, 6, 6)),
    "compose_sr_cs": (
        lambda: Compose(BicubicDownsample(2), PartialCirculant((3, 3, 3), 9, seed=0)),
        (3, 6, 6),
    ),
}


@pytest.fixture(params=sorted(LINEAR))
def linear(request) -> Tuple[LinearOperator, Tuple[int, int, int]]:
    build, shape = LINEAR[request.param]
    return build(), shape


def _rand(shape, seed=0, dtype=F64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


# ---------------------------------------------------------------------------
# Every linear operator: shapes, adjointness, gradcheck, batch == per-sample.
# ---------------------------------------------------------------------------
def test_linear_is_linear_operator(linear):
    op, _ = linear
    assert isinstance(op, LinearOperator)


def test_linear_shapes_and_adjoint_shape(linear):
    op, shape = linear
    x = _rand((2, *shape), dtype=torch.float32)
    y = op.A(x)
    assert y.shape[0] == 2 and y.dtype == torch.float32
    assert op.A_adjoint(y).shape == x.shape
    assert op(x).shape == y.shape  # forward = noise(A(x)) keeps the measurement shape


def test_linear_adjointness_float64(linear):
    op, shape = linear
    x = _rand((2, *shape), seed=1)
    y = torch.randn(op.A(x).shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    lhs = (op.A(x) * y).sum()
    rhs = (x * op.A_adjoint(y)).sum()
    assert abs(lhs - rhs).item() <= 1e-5 * max(1.0, abs(lhs).item())


def test_linear_gradcheck_float64(linear):
    op, shape = linear
    # fast_mode checks random directional derivatives (the full Jacobian of a
    # 2x3x12x12 input would take a minute on a shared CPU).
    x = _rand((2, *shape), seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(op.A, (x,), fast_mode=True)
    y = torch.randn(op.A(x).shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    assert torch.autograd.gradcheck(op.A_adjoint, (y.requires_grad_(True),), fast_mode=True)


def test_linear_batch_equals_per_sample(linear):
    op, shape = linear
    x = _rand((3, *shape), seed=5, dtype=torch.float32)
    batched = op.A(x)
    single = torch.cat([op.A(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    adj = op.A_adjoint(batched)
    adj_single = torch.cat([op.A_adjoint(batched[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(adj, adj_single, rtol=1e-5, atol=1e-6)


# Specs whose operators differ per problem: stacking must equal each alone.
PER_SAMPLE_SPECS = {
    "random_mask": (RandomMask(0.3, shared=False), (3, 6, 6)),
    "cs_circulant": (CompressedSensing(m=17, kind="circulant", shared=False), (3, 4, 4)),
    "cs_gaussian": (CompressedSensing(ratio=0.25, kind="gaussian", shared=False), (3, 4, 4)),
    "compose": (ComposeSpec([SuperResolution(2), RandomMask(0.5, shared=False)]), (3, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(PER_SAMPLE_SPECS))
def test_stack_of_per_sample_operators_equals_each_alone(name):
    spec, shape = PER_SAMPLE_SPECS[name]
    assert not spec.shared
    ops = [spec.build(shape, seed) for seed in (0, 1, 2)]
    stacked = Operator.stack(ops)
    x = _rand((3, *shape), seed=6)
    y = stacked.A(x)
    torch.testing.assert_close(y, torch.cat([o.A(x[i : i + 1]) for i, o in enumerate(ops)]))
    torch.testing.assert_close(
        stacked.A_adjoint(y), torch.cat([o.A_adjoint(y[i : i + 1]) for i, o in enumerate(ops)])
    )
    # The problems really differ (otherwise this test could not fail).
    assert not torch.allclose(ops[0].A(x[:1]), ops[1].A(x[:1]))
    # And the stacked operator is still exactly adjoint.
    yy = torch.randn(y.shape, dtype=F64)
    assert torch.allclose((y * yy).sum(), (x * stacked.A_adjoint(yy)).sum())


def test_stacked_operator_rejects_other_batch_size():
    ops = [CompressedSensing(m=5, shared=False).build((1, 4, 4), s) for s in (0, 1)]
    with pytest.raises(ValueError, match="2 per-problem matrices but the batch has 3"):
        Operator.stack(ops).A(torch.zeros(3, 1, 4, 4))
    masks = [RandomMask(0.5).build((1, 4, 4), s) for s in (0, 1)]
    with pytest.raises(ValueError, match="2 per-problem masks but the batch has 3"):
        Operator.stack(masks).A(torch.zeros(3, 1, 4, 4))


# ---------------------------------------------------------------------------
# Inpainting
# ---------------------------------------------------------------------------
def test_inpainting_masks_and_superimposes():
    mask = _mask(4, 4)
    op = Inpainting(mask)
    x, y_img = _rand((2, 3, 4, 4), 0), _rand((2, 3, 4, 4), 1)
    assert torch.equal(op.A(x), x * mask.to(F64))
    sup = op.superimpose(x, op.A(y_img))
    assert torch.equal(sup, torch.where(mask.bool(), y_img, x))
    # Error over observed entries only: independent of the unobserved pixels.
    err = op.measurement_error(op.A(x), op.A(y_img))
    expected = ((x - y_img) ** 2 * mask).flatten(1).sum(1) / (mask.sum() * 3)
    torch.testing.assert_close(err, expected)


def test_inpainting_bad_masks():
    with pytest.raises(ValueError, match="observes no pixel"):
        Inpainting(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        Inpainting(torch.full((4, 4), 0.5))
    op = Inpainting(torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"the mask is \(4, 4\) but the images are \(8, 8\)"):
        op.A(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="mask has 3 channels but the images have 1"):
        Inpainting(torch.ones(3, 4, 4)).A(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        BoxMask([0, 9, 0, 1]).build((3, 8, 8), 0)


def test_random_mask_shared_and_seeded():
    shared = RandomMask(0.25, shared=True, seed=3)
    assert torch.equal(shared.build((3, 8, 8), 0).mask, shared.build((3, 8, 8), 1).mask)
    per = RandomMask(0.25)
    assert torch.equal(per.build((3, 8, 8), 5).mask, per.build((3, 8, 8), 5).mask)
    assert not torch.equal(per.build((3, 8, 8), 5).mask, per.build((3, 8, 8), 6).mask)
    assert per.build((3, 8, 8), 0).mask.sum() == 16


# ---------------------------------------------------------------------------
# Denoising
# ---------------------------------------------------------------------------
def test_gaussian_noise_std_on_minus1_1_scale():
    op = GaussianNoise(25, clip=False)
    assert op.std == pytest.approx(2 * 25 / 255) == sigma_to_std(25)
    x = torch.zeros(4, 3, 64, 64)
    n = op(x, generator=torch.Generator().manual_seed(0)) - x
    assert n.mean().abs() < 0.01
    assert n.std().item() == pytest.approx(2 * 25 / 255, rel=0.03)


def test_gaussian_noise_clips_to_valid_range_and_handles_sigma_256():
    x = _rand((2, 3, 32, 32), 0, dtype=torch.float32)
    y = GaussianNoise(256)(x, generator=torch.Generator().manual_seed(1))
    assert y.min() >= -1 and y.max() <= 1
    assert (y.abs() == 1).float().mean() > 0.3  # heavy noise saturates many pixels
    # Moderate noise near the border is clipped too, and clip=False keeps it.
    ones = torch.ones(1, 1, 16, 16)
    assert GaussianNoise(25)(ones).max() == 1
    assert GaussianNoise(25, clip=False)(ones, generator=torch.Generator().manual_seed(0)).max() > 1


def test_gaussian_noise_fresh_each_call_and_seeded():
    op, x = GaussianNoise(25), torch.zeros(1, 3, 8, 8)
    assert not torch.equal(op(x), op(x))  # SNA: fresh noise each call
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(op(x, generator=g()), op(x, generator=g()))


def test_gaussian_noise_is_differentiable():
    op = GaussianNoise(5)
    x = torch.zeros(1, 1, 8, 8, requires_grad=True)
    op(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # clamp passes gradient inside the range
    y = torch.full((1, 1, 3, 3), 0.2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: op.noise(t, torch.Generator().manual_seed(0)), (y,))


def test_denoising_spec_and_bad_sigma():
    op = Denoising(sigma=50).build((3, 8, 8), 0)
    assert isinstance(op, GaussianNoise) and op.sigma == 50 and Denoising.shared
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        GaussianNoise(-1)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        Denoising(float("nan"))


# ---------------------------------------------------------------------------
# Super-resolution
# ---------------------------------------------------------------------------
def test_sr_factor_1_is_exactly_identity():
    x = _rand((2, 3, 7, 5), 0, dtype=torch.float32)
    op = BicubicDownsample(1)
    assert torch.equal(op.A(x), x) and torch.equal(op.A_adjoint(x), x)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_sr_matches_pil_bicubic_in_the_interior(factor):
    from PIL import Image

    x = _rand((1, 1, 48, 48), factor, dtype=torch.float32)
    ours = BicubicDownsample(factor).A(x)[0, 0].numpy()
    ref = np.asarray(Image.fromarray(x[0, 0].numpy()).resize((48 // factor,) * 2, Image.BICUBIC))
    assert ref.dtype == np.float32
    np.testing.assert_allclose(ours[3:-3, 3:-3], ref[3:-3, 3:-3], atol=1e-5)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_sr_keeps_constants_and_shapes(factor, padding):
    op = BicubicDownsample(factor, padding)
    x = torch.full((2, 3, 4 * factor, 2 * factor), 0.3)
    y = op.A(x)
    assert y.shape == (2, 3, 4, 2)
    torch.testing.assert_close(y, torch.full_like(y, 0.3))


def test_sr_kernel_is_keys_a_minus_half():
    t_min, w = bicubic_taps(2)
    assert (t_min, len(w)) == (-3, 8)
    assert sum(w) == pytest.approx(1)
    # Independent re-derivation: k(d / s) / s at d = t - 0.5 (centre between pixels), normalised.
    k = lambda t: 1.5 * abs(t) ** 3 - 2.5 * t**2 + 1 if abs(t) <= 1 else -0.5 * abs(t) ** 3 + 2.5 * t**2 - 4 * abs(t) + 2  # noqa: E501, E731
    raw = [k((t - 0.5) / 2) / 2 for t in range(-3, 5)]
    assert w == pytest.approx([r / sum(raw) for r in raw], abs=1e-12)
    assert pad_index(3, 2, 2, "reflect").tolist() == [2, 1, 0, 1, 2, 1, 0]
    assert pad_index(3, 2, 2, "symmetric").tolist() == [1, 0, 0, 1, 2, 2, 1]


def test_sr_bad_factor():
    op = BicubicDownsample(3)
    with pytest.raises(ValueError, match="factor 3 does not divide the image size 64x64"):
        op.A(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="factor 3 does not divide the image size 64x63"):
        SuperResolution(3).build((3, 64, 63), 0)
    with pytest.raises(ValueError, match="integer >= 1"):
        BicubicDownsample(0)
    with pytest.raises(ValueError, match="unknown padding 'zeros'"):
        BicubicDownsample(2, "zeros")


def test_upsample_bicubic():
    y = _rand((2, 3, 4, 4), 0, dtype=torch.float32)
    up = upsample_bicubic(y, 4)
    assert up.shape == (2, 3, 16, 16) and up.min() >= -1 and up.max() <= 1
    assert torch.equal(upsample_bicubic(y, 1), y)
    const = torch.full((1, 1, 4, 4), 0.5)
    torch.testing.assert_close(upsample_bicubic(const, 2), torch.full((1, 1, 8, 8), 0.5))


# ---------------------------------------------------------------------------
# Compressed sensing
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape,m", [((3, 4, 4), 20), ((1, 5, 7), 35), ((2, 3, 3), 1)])
def test_circulant_equals_its_dense_matrix(shape, m):
    op = PartialCirculant(shape, m, seed=3)
    mat = op.dense()[0]
    assert mat.shape == (m, math.prod(shape))
    x = _rand((2, *shape), 0)
    torch.testing.assert_close(op.A(x), x.flatten(1) @ mat.T, rtol=1e-10, atol=1e-10)
    y = torch.randn(2, m, dtype=F64)
    torch.testing.assert_close(op.A_adjoint(y).flatten(1), y @ mat, rtol=1e-10, atol=1e-10)
    # Structure: entries are +-g[(i-j) mod n]/sqrt(m) over m distinct sorted rows.
    assert torch.equal(op.rows[0], op.rows[0].unique())
    assert set(op.signs.unique().tolist()) <= {-1.0, 1.0}


def test_circulant_state_is_small_for_megapixel_images():
    op = CompressedSensing(ratio=0.1).build((3, 1024, 1024), 0)
    assert isinstance(op, PartialCirculant) and op.m == round(0.1 * 3 * 1024 * 1024)
    nbytes = sum(b.numel() * b.element_size() for b in op.buffers())
    assert nbytes < 100 * 2**20, f"{nbytes / 2**20:.1f} MiB of state"
    y = op.A(torch.zeros(1, 3, 1024, 1024))
    assert y.shape == (1, op.m)


@pytest.mark.parametrize("kind", ["circulant", "gaussian"])
def test_cs_scaling_preserves_norm_in_expectation(kind):
    shape, m = (3, 8, 8), 48
    x = _rand((1, *shape), 0)
    spec = CompressedSensing(m=m, kind=kind, shared=False)
    ratios = [
        (spec.build(shape, s).A(x).pow(2).sum() / x.pow(2).sum()).item() for s in range(200)
    ]
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.08)
    # Columns have unit expected squared norm.
    cols = torch.stack([spec.build(shape, s).dense()[0].pow(2).sum(0) for s in range(20)])
    assert cols.mean().item() == pytest.approx(1.0, abs=0.05)


def test_cs_survives_module_dtype_casts():
    # Lightning's precision plugins cast modules with .to(dtype)/.double(): the
    # filter's spectrum must keep its imaginary part.
    op = PartialCirculant((3, 4, 4), 12, seed=5)
    ref = op.dense()[0]
    x = _rand((2, 3, 4, 4), 0)
    for cast in (op.to(F64), op.double(), op.half().float()):
        torch.testing.assert_close(cast.A(x), x.flatten(1) @ ref.T, rtol=1e-2, atol=1e-2)
    assert op.float().A(x.half()).dtype == torch.float16


def test_cs_measurement_error_and_superimpose():
    op = PartialCirculant((1, 4, 4), 5)
    ax, y = torch.zeros(2, 5), torch.tensor([[1.0, 1, 1, 1, 1], [2, 0, 0, 0, 0]])
    torch.testing.assert_close(op.measurement_error(ax, y), torch.tensor([1.0, 0.8]))
    assert op.superimpose(torch.zeros(2, 1, 4, 4), y) is None


def test_cs_seeded_and_independent_of_global_rng():
    torch.manual_seed(0)
    a = PartialCirculant((3, 4, 4), 10, seed=9)
    torch.manual_seed(1)
    b = PartialCirculant((3, 4, 4), 10, seed=9)
    for name in PartialCirculant.batched_buffers:
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.signs, PartialCirculant((3, 4, 4), 10, seed=10).signs)
    shared = CompressedSensing(m=10, kind="gaussian", seed=4)
    assert torch.equal(shared.build((3, 4, 4), 0).matrix, shared.build((3, 4, 4), 1).matrix)


def test_cs_bad_input():
    with pytest.raises(ValueError, match=r"m=0 must be in \[1, n\] with n = C\*H\*W = 48"):
        PartialCirculant((3, 4, 4), 0)
    with pytest.raises(ValueError, match="m=49 must be in .* n = C\\*H\\*W = 48"):
        GaussianMatrix((3, 4, 4), 49)
    with pytest.raises(ValueError, match="too large.*use PartialCirculant"):
        GaussianMatrix((3, 256, 256), 10)
    with pytest.raises(ValueError, match="exactly one of ratio"):
        CompressedSensing(ratio=0.1, m=10)
    with pytest.raises(ValueError, match=r"ratio m/n must be in \(0, 1\]"):
        CompressedSensing(ratio=1.5)
    with pytest.raises(ValueError, match="unknown compressed-sensing kind 'fourier'"):
        CompressedSensing(ratio=0.1, kind="fourier")
    op = PartialCirculant((3, 4, 4), 10)
    with pytest.raises(ValueError, match=r"built for images of shape \(3, 4, 4\) but got \(3, 8, 8\)"):
        op.A(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expects measurements \[B, 10\]"):
        op.A_adjoint(torch.zeros(1, 11))


# ---------------------------------------------------------------------------
# Observations: validation and reproducibility
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "op", [Inpainting(torch.ones(4, 4)), BicubicDownsample(2), PartialCirculant((3, 4, 4), 6)]
)
def test_check_observation(op):
    x = torch.zeros(1, 3, 4, 4)
    y = op(x)
    op.check_observation(y, x)  # a real observation passes
    bad = y.clone()
    bad.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        op.check_observation(bad, x)
    bad.view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        op.check_observation(bad, x)
    with pytest.raises(ValueError, match=r"produces measurements of shape .* but the observation has shape"):
        op.check_observation(torch.zeros(1, 3, 2, 3), x)


@pytest.mark.parametrize(
    "spec",
    [
        RandomMask(0.5),
        Denoising(25),
        CompressedSensing(ratio=0.5, shared=False),
        ComposeSpec([SuperResolution(2), Denoising(25)]),
        ComposeSpec([CompressedSensing(m=20, shared=False), Denoising(10, clip=False)]),
    ],
    ids=lambda s: type(s).__name__,
)
def test_observation_reproducible_from_seed(spec):
    x = _rand((1, 3, 8, 8), 0, dtype=torch.float32)
    obs = [spec.build((3, 8, 8), 11)(x, generator=torch.Generator().manual_seed(11)) for _ in range(2)]
    assert torch.equal(obs[0], obs[1])


# ---------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------
def test_compose_sr_then_noise():
    op = Compose(BicubicDownsample(4), GaussianNoise(25, clip=False))
    assert isinstance(op, LinearCompose)
    x = torch.zeros(2, 3, 32, 32)
    y = op(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == (2, 3, 8, 8)
    assert y.std().item() == pytest.approx(2 * 25 / 255, rel=0.1)
    assert torch.equal(op.A(x), BicubicDownsample(4).A(x))
    assert op.superimpose(x, y) is None
    noisy = Noisy(BicubicDownsample(4), 25)
    assert isinstance(noisy, LinearCompose) and noisy.ops[-1].sigma == 25


def test_compose_inpainting_noise_keeps_inpainting_measurement_space():
    mask = _mask(4, 4)
    op = Compose(Inpainting(mask), GaussianNoise(10))
    x, y = _rand((1, 3, 4, 4), 0), _rand((1, 3, 4, 4), 1)
    torch.testing.assert_close(op.measurement_error(x, y), Inpainting(mask).measurement_error(x, y))
    torch.testing.assert_close(op.superimpose(x, y), Inpainting(mask).superimpose(x, y))


def test_compose_accepts_callables_and_modules():
    op = Compose(nn.AvgPool2d(2), lambda t: 2 * t)
    assert not isinstance(op, LinearOperator)
    x = _rand((2, 1, 4, 4), 0)
    torch.testing.assert_close(op.A(x), 2 * nn.functional.avg_pool2d(x, 2))
    assert torch.equal(op(x), op.A(x))  # no noise model


def test_compose_bad_input():
    with pytest.raises(ValueError, match="only the last operator's noise is applied"):
        Compose(GaussianNoise(25), BicubicDownsample(2))
    with pytest.raises(ValueError, match="at least one operator"):
        Compose()
    with pytest.raises(TypeError, match="operators or callables; got int"):
        Compose(BicubicDownsample(2), 3)
    with pytest.raises(TypeError, match="OperatorSpec instances; got str"):
        ComposeSpec(["sr"])


def test_compose_spec_propagates_shapes_and_sharing():
    spec = ComposeSpec([SuperResolution(2), RandomMask(0.5)])
    assert not spec.shared
    op = spec.build((3, 8, 8), 0)
    assert op.ops[1].mask.shape == (1, 1, 4, 4)
    assert op.A(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 4, 4)
    assert ComposeSpec([SuperResolution(2), Denoising(5)]).shared
    stacked = Operator.stack([spec.build((3, 8, 8), s) for s in (0, 1)])
    assert isinstance(stacked, LinearCompose) and stacked.ops[1].mask.shape[0] == 2
