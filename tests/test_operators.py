"""Tests of the forward operators (inpainting, denoising, SR, CS, classifier, composition).

Every shipped operator is listed in :data:`OPERATORS` (deepinv-style, built by
:func:`find_operator` on a device) and goes through the package's own contract
checker, :func:`ilo_pl.testing.operators.check_operator`; the rest are the
numeric facts of each operator.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, List, Tuple, Union

import numpy as np
import pytest
import torch
from torch import nn

from ilo_pl.classifiers import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier
from ilo_pl.losses import MeasurementLoss, MSELoss
from ilo_pl.losses.base import LossContext
from ilo_pl.operators.base import Identity, LambdaOperator, LinearOperator, Operator
from ilo_pl.operators.classifier import ClassifierOperator
from ilo_pl.operators.compose import Compose, ComposeSpec, LinearCompose, Noisy
from ilo_pl.operators.cs import CompressedSensing, GaussianMatrix, PartialCirculant
from ilo_pl.operators.inpainting import BoxMask, FileMask, Inpainting, RandomMask
from ilo_pl.operators.noise import Denoising, GaussianNoise, GaussianNoiseModel, NoiseModel, sigma_to_std
from ilo_pl.operators.superres import (
    PADDINGS,
    BicubicDownsample,
    SuperResolution,
    bicubic_taps,
    pad_index,
    upsample_bicubic,
)
from ilo_pl.testing.operators import PROPERTIES, check_operator

F64 = torch.float64


def _mask(h: int, w: int, c: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(1, c, h, w, generator=g) < 0.5).float()
    m[..., 0, 0] = 1  # never empty
    return m


def _rand(shape, seed=0, dtype=F64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def _tiny_classifier() -> ClassifierOperator:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 5),
    )
    return ClassifierOperator(ImageClassifier(net, IMAGENET_MEAN, IMAGENET_STD, 8, num_classes=5))


def _per_problem(spec: Any, shape: Tuple[int, int, int]) -> List[Operator]:
    assert not spec.shared
    return [spec.build(shape, seed) for seed in (0, 1, 2)]


# ---------------------------------------------------------------------------
# Every shipped operator, deepinv-style: name -> () -> (operator or list of
# one-sample operators, image shape (C, H, W), extra check_operator arguments).
# ---------------------------------------------------------------------------
Case = Tuple[Union[Operator, List[Operator]], Tuple[int, int, int], Dict[str, Any]]

OPERATORS: Dict[str, Callable[[], Case]] = {
    "identity": lambda: (Identity(), (3, 6, 6), {}),
    "inpainting": lambda: (Inpainting(_mask(6, 6)), (3, 6, 6), {}),
    "inpainting_rgb_mask": lambda: (Inpainting(_mask(6, 6, c=3)), (3, 6, 6), {}),
    "inpainting_noisy": lambda: (Inpainting(_mask(6, 6), noise_model=GaussianNoiseModel(10)), (3, 6, 6), {}),
    "gaussian_noise": lambda: (GaussianNoise(25), (3, 6, 6), {}),
    "sr1": lambda: (BicubicDownsample(1), (3, 12, 12), {}),
    "sr2": lambda: (BicubicDownsample(2), (3, 12, 12), {}),
    "sr3": lambda: (BicubicDownsample(3), (2, 12, 9), {}),
    "sr4": lambda: (BicubicDownsample(4), (1, 8, 12), {}),
    "sr3_symmetric": lambda: (BicubicDownsample(3, "symmetric"), (1, 6, 9), {}),
    "sr2_replicate": lambda: (BicubicDownsample(2, "replicate"), (1, 6, 4), {}),
    "sr2_circular": lambda: (BicubicDownsample(2, "circular"), (1, 6, 4), {}),
    "circulant": lambda: (PartialCirculant((3, 4, 4), 20, seed=1), (3, 4, 4), {}),
    "circulant_odd_n": lambda: (PartialCirculant((1, 5, 7), 11, seed=2), (1, 5, 7), {}),
    "circulant_noisy": lambda: (
        PartialCirculant((3, 4, 4), 20, seed=1).with_noise(GaussianNoiseModel(10, clip=False)), (3, 4, 4), {}),
    "gaussian_matrix": lambda: (GaussianMatrix((3, 4, 4), 20, seed=1), (3, 4, 4), {}),
    "compose_sr_mask": lambda: (Compose(BicubicDownsample(2), Inpainting(_mask(3, 3))), (3, 6, 6), {}),
    "compose_sr_noise": lambda: (Compose(BicubicDownsample(2), GaussianNoise(10)), (3, 6, 6), {}),
    "compose_sr_cs": lambda: (
        Compose(BicubicDownsample(2), PartialCirculant((3, 3, 3), 9, seed=0)), (3, 6, 6), {}),
    "compose_noise_model": lambda: (
        Compose(BicubicDownsample(2), Inpainting(_mask(3, 3)), noise_model=GaussianNoiseModel(5)), (3, 6, 6), {}),
    "noisy_cs": lambda: (Noisy(PartialCirculant((3, 4, 4), 12, seed=3), 10, clip=False), (3, 4, 4), {}),
    "stacked_random_mask": lambda: (_per_problem(RandomMask(0.3), (3, 6, 6)), (3, 6, 6), {}),
    "stacked_cs_circulant": lambda: (
        _per_problem(CompressedSensing(m=17, kind="circulant", shared=False), (3, 4, 4)), (3, 4, 4), {}),
    "stacked_cs_gaussian": lambda: (
        _per_problem(CompressedSensing(ratio=0.25, kind="gaussian", shared=False), (3, 4, 4)), (3, 4, 4), {}),
    "stacked_compose": lambda: (
        _per_problem(ComposeSpec([SuperResolution(2), RandomMask(0.5)]), (3, 8, 8)), (3, 8, 8), {}),
    "stacked_compose_noise": lambda: (
        _per_problem(ComposeSpec([CompressedSensing(m=20, shared=False), Denoising(10, clip=False)]), (3, 4, 4)),
        (3, 4, 4), {}),
    "lambda_tanh": lambda: (LambdaOperator(torch.tanh), (1, 4, 4), {}),
    "compose_callables": lambda: (Compose(nn.AvgPool2d(2), lambda t: 2 * t), (1, 4, 4), {}),
    "classifier": lambda: (_tiny_classifier(), (3, 6, 6), {"observation": torch.tensor([0, 4, 2])}),
}

#: The operators of OPERATORS that are not linear (every other one must be checked as linear).
NONLINEAR = {"lambda_tanh", "compose_callables", "classifier"}


def find_operator(name: str, device: Union[str, torch.device]) -> Case:
    """The operator (or one-sample operators) called ``name``, its image shape and check arguments, on ``device``."""
    op, shape, kwargs = OPERATORS[name]()
    op = [o.to(device) for o in op] if isinstance(op, list) else op.to(device)
    return op, shape, dict(kwargs)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_contract(name, device):
    op, shape, kwargs = find_operator(name, device)
    checked = check_operator(op, shape, device=device, **kwargs)
    linear = name not in NONLINEAR
    assert isinstance(op[0] if isinstance(op, list) else op, LinearOperator) == linear
    assert checked == [p for p in PROPERTIES if linear or p not in ("linearity", "adjoint shape", "adjointness")]


def test_operator_contract_in_float32():
    for name in ("circulant", "sr3", "stacked_cs_gaussian", "inpainting_noisy"):
        op, shape, kwargs = find_operator(name, "cpu")
        assert "adjointness" in check_operator(op, shape, dtype=torch.float32, **kwargs)


@pytest.mark.parametrize("name", sorted(n for n in OPERATORS if n.startswith("stacked_")))
def test_per_problem_operators_really_differ(name):
    # Otherwise "stacked == each alone" could not fail.
    ops, shape, _ = find_operator(name, "cpu")
    x = _rand((1, *shape), 6)
    assert not torch.allclose(ops[0].A(x), ops[1].A(x))


def test_stacked_operator_rejects_other_batch_size():
    ops = [CompressedSensing(m=5, shared=False).build((1, 4, 4), s) for s in (0, 1)]
    with pytest.raises(ValueError, match="2 per-problem matrices but the batch has 3"):
        Operator.stack(ops).A(torch.zeros(3, 1, 4, 4))
    masks = [RandomMask(0.5).build((1, 4, 4), s) for s in (0, 1)]
    with pytest.raises(ValueError, match="2 per-problem masks but the batch has 3"):
        Operator.stack(masks).A(torch.zeros(3, 1, 4, 4))


# ---------------------------------------------------------------------------
# check_operator cannot pass vacuously: broken operators fail, naming the property.
# ---------------------------------------------------------------------------
class _WrongAdjoint(LinearOperator):
    def A(self, x):  # noqa: N802
        return x.flip(-1)

    def A_adjoint(self, y):  # noqa: N802
        return y  # the adjoint of a flip is the flip


class _NotLinear(LinearOperator):
    def A(self, x):  # noqa: N802
        return x * x.abs()

    def A_adjoint(self, y):  # noqa: N802
        return y


class _GlobalRNGNoise(NoiseModel):
    def forward(self, y, generator=None):
        return y + 0.1 * torch.randn_like(y)  # ignores the generator


class _NoisyA(Operator):
    def A(self, x):  # noqa: N802
        return x + 0.1 * torch.randn_like(x)


class _ForwardNotNoiseOfA(Identity):
    def forward(self, x, generator=None):
        return 2 * x


class _BadErrorShape(Identity):
    def measurement_error(self, Ax, y):  # noqa: N803
        return (Ax - y).pow(2).mean()  # a scalar, not [B]


class _AdjointWrongShape(LinearOperator):
    def A(self, x):  # noqa: N802
        return x[..., ::2, ::2]

    def A_adjoint(self, y):  # noqa: N802
        return y  # forgot to scatter back to the image size


class _BadGradient(Operator):
    def A(self, x):  # noqa: N802
        return _Square.apply(x)


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        return grad * x  # should be 2 * x


class _ReversedStack(Inpainting):
    def _stacked(self, ops):
        return super()._stacked(list(reversed(ops)))  # problems' masks in the wrong rows


BROKEN = {
    "wrong adjoint": (lambda: _WrongAdjoint(), {}, "'adjointness'.*not the adjoint of A"),
    "batch-dependent": (lambda: LambdaOperator(lambda x: x - x.mean(0, keepdim=True)), {},
                        "'batch == per-sample'.*A\\(batch\\) != A of each sample alone"),
    "stack differs from each alone": (
        lambda: [_ReversedStack(_mask(4, 4, seed=s)) for s in (0, 1)], {}, "'batch == per-sample'"),
    "noise ignores the generator": (
        lambda: Identity(noise_model=_GlobalRNGNoise()), {}, "'noise'.*draw all noise from the generator"),
    "random A": (lambda: _NoisyA(), {}, "'deterministic A'.*put randomness in the noise model"),
    "forward is not noise(A(x))": (
        lambda: _ForwardNotNoiseOfA(), {}, "'noise'.*forward must be noise\\(A\\(x\\)\\)"),
    "error is not [B]": (lambda: _BadErrorShape(), {}, "'measurement_error'.*must be a float tensor \\[B\\]"),
    "not linear": (lambda: _NotLinear(), {}, "'linearity'.*A\\(a x \\+ b x'\\) != a A\\(x\\) \\+ b A\\(x'\\)"),
    "linear=True without adjoint": (
        lambda: LambdaOperator(torch.tanh), {"linear": True}, "'linearity'.*not a LinearOperator"),
    "adjoint of the wrong shape": (lambda: _AdjointWrongShape(), {}, "'adjoint shape'.*must map measurements back"),
    "wrong gradient": (lambda: _BadGradient(), {}, "'gradcheck'.*raised GradcheckError"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_operator_fails_broken_operators(case):
    build, kwargs, message = BROKEN[case]
    op = build()
    with pytest.raises(AssertionError, match=f"check_operator: .* fails {message}"):
        check_operator(op, (1, 4, 4), **kwargs)


def test_check_operator_bad_arguments():
    stacked = Operator.stack([RandomMask(0.5).build((1, 4, 4), s) for s in (0, 1)])
    with pytest.raises(ValueError, match="give check_operator the list of one-sample operators"):
        check_operator(stacked, (1, 4, 4))
    with pytest.raises(TypeError, match="takes an Operator or a non-empty list"):
        check_operator(torch.tanh, (1, 4, 4))
    with pytest.raises(ValueError, match=r"shape must be the image shape \(C, H, W\)"):
        check_operator(Identity(), (2, 1, 4, 4))


def test_check_operator_leaves_the_operator_alone():
    op = Inpainting(_mask(4, 4))
    check_operator(op, (1, 4, 4), dtype=F64)
    assert op.mask.dtype == torch.float32  # checked on a float64 copy
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
# Noise as a component: noise_model=, with_noise, bit-identical observations
# ---------------------------------------------------------------------------
def _g(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_noise_draws_are_pinned():
    # The observation of a seed is fixed: x + std * randn(generator), then clipped.
    x = _rand((2, 3, 8, 8), 0, dtype=torch.float32)
    want = (x + sigma_to_std(25) * torch.randn(x.shape, generator=_g())).clamp(-1, 1)
    assert torch.equal(GaussianNoise(25)(x, _g()), want)
    assert torch.equal(Identity(noise_model=GaussianNoiseModel(25))(x, _g()), want)
    cs = PartialCirculant((3, 8, 8), 40, seed=2)
    ax = cs.A(x)
    want = ax + sigma_to_std(10) * torch.randn(ax.shape, generator=_g())
    assert torch.equal(Noisy(cs, 10, clip=False)(x, _g()), want)
    assert torch.equal(cs.with_noise(GaussianNoiseModel(10, clip=False))(x, _g()), want)


def test_noise_model_constructor_with_noise_and_compose_agree():
    mask = _mask(8, 8)
    x = _rand((2, 3, 8, 8), 1, dtype=torch.float32)
    built = Inpainting(mask, noise_model=GaussianNoiseModel(10))
    plain = Inpainting(mask)
    swapped = plain.with_noise(GaussianNoiseModel(10))
    composed = Compose(Inpainting(mask), GaussianNoise(10))
    ys = [op(x, _g(3)) for op in (built, swapped, composed)]
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[0], ys[2])
    # with_noise returns a new operator: the original stays noiseless and shares the mask.
    assert plain.noise_model is None and torch.equal(plain(x), plain.A(x))
    assert swapped is not plain and swapped.mask is plain.mask
    assert swapped.with_noise(None).noise_model is None and swapped.noise_model is not None
    # The noise model is a child module: it moves with the operator and shows in its repr.
    assert "GaussianNoiseModel(sigma=10" in repr(built)
    assert isinstance(built.noise_model, NoiseModel)


def test_noise_is_fresh_without_generator_and_differentiable():
    op = Inpainting(_mask(4, 4), noise_model=GaussianNoiseModel(5))
    x = torch.zeros(1, 3, 4, 4)
    assert not torch.equal(op(x), op(x))
    xr = x.clone().requires_grad_(True)
    op(xr).sum().backward()
    torch.testing.assert_close(xr.grad, op.mask.expand_as(xr))


def test_noise_model_must_be_a_module():
    with pytest.raises(TypeError, match="a noise model must be an nn.Module .* got function"):
        Inpainting(_mask(4, 4), noise_model=lambda y, g: y)
    with pytest.raises(TypeError, match="a noise model must be an nn.Module"):
        Identity().with_noise(0.1)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        GaussianNoiseModel(-1)


def test_compose_has_one_noise_model():
    sr, mask = BicubicDownsample(2), _mask(3, 3)
    op = Compose(sr, Inpainting(mask), noise_model=GaussianNoiseModel(5))
    x = _rand((1, 3, 6, 6), 0, dtype=torch.float32)
    assert torch.equal(op(x, _g()), Compose(sr, Inpainting(mask, noise_model=GaussianNoiseModel(5)))(x, _g()))
    assert torch.equal(op.with_noise(None)(x, _g()), op.A(x))
    with pytest.raises(ValueError, match="both the last part .* and noise_model= give"):
        Compose(sr, GaussianNoise(5), noise_model=GaussianNoiseModel(5))
    with pytest.raises(ValueError, match="at position 0 of Compose has a noise model, but a composition has one"):
        Compose(GaussianNoise(25), BicubicDownsample(2))

    class OwnNoise(Identity):
        def noise(self, y, generator=None):
            return y + 1

    with pytest.raises(TypeError, match="OwnNoise at position 1 of Compose overrides Operator.noise"):
        Compose(sr, OwnNoise())
    # Stacking keeps the composition's noise model.
    spec = ComposeSpec([SuperResolution(2), RandomMask(0.5)])
    parts = [spec.build((3, 6, 6), s).with_noise(GaussianNoiseModel(5)) for s in (0, 1)]
    stacked = Operator.stack(parts)
    assert isinstance(stacked.noise_model, GaussianNoiseModel)


# ---------------------------------------------------------------------------
# adjointness_test and compute_sqnorm
# ---------------------------------------------------------------------------
def test_adjointness_test_separates_exact_and_wrong_adjoints():
    exact = BicubicDownsample(2)
    err = exact.adjointness_test((3, 8, 8))
    assert err.dtype == F64 and err.dim() == 0 and err < 1e-14
    assert _WrongAdjoint().adjointness_test((1, 16, 16)) > 1e-3
    # (C, H, W) takes the batch from the per-problem buffers; (B, C, H, W) is used as is.
    stacked = Operator.stack(_per_problem(RandomMask(0.5), (1, 4, 4)))
    assert stacked.adjointness_test((1, 4, 4)) < 1e-14
    assert stacked.adjointness_test((3, 1, 4, 4)) < 1e-14
    with pytest.raises(ValueError, match="3 per-problem masks but the batch has 2"):
        stacked.adjointness_test((2, 1, 4, 4))
    with pytest.raises(ValueError, match="A_adjoint returns shape .* must map measurements back"):
        _AdjointWrongShape().adjointness_test((1, 4, 4))


def test_diagnostics_are_reproducible_and_leave_the_global_rng_alone():
    op = GaussianMatrix((1, 4, 4), 8, seed=0)
    state = torch.get_rng_state()
    a, b = op.adjointness_test((1, 4, 4)), op.adjointness_test((1, 4, 4))
    s1 = op.compute_sqnorm((1, 4, 4), max_iter=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and torch.equal(s1, op.compute_sqnorm((1, 4, 4), max_iter=5))
    assert not torch.equal(s1, op.compute_sqnorm((1, 4, 4), max_iter=5, generator=_g(1)))


def _sqnorm(op: LinearOperator, shape) -> torch.Tensor:
    return op.compute_sqnorm(shape, max_iter=3000, tol=1e-13)


def _spectral_sq(mat: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(mat.to(F64), ord=2) ** 2)


def _dense_of(op: LinearOperator, shape) -> torch.Tensor:
    n = math.prod(shape)
    return op.A(torch.eye(n, dtype=F64).view(n, *shape)).flatten(1).T  # column j = A e_j


@pytest.mark.parametrize("op", [Identity(), GaussianNoise(25), BicubicDownsample(1), Inpainting(_mask(6, 6)),
                                Inpainting(_mask(6, 6, c=3))], ids=lambda o: type(o).__name__)
def test_sqnorm_of_projections_is_one(op):
    # A^T A is the identity or a 0/1 diagonal: its largest eigenvalue is exactly 1.
    assert op.compute_sqnorm((3, 6, 6)).tolist() == [pytest.approx(1.0, abs=1e-12)]


def test_sqnorm_of_full_circulant_is_its_largest_squared_frequency_over_m():
    # m = n: A = C D / sqrt(m) with D orthogonal, so A A^T = C C^T / m, whose
    # eigenvalues are the squared magnitudes of the filter's DFT, over m.
    op = PartialCirculant((1, 4, 5), 20, seed=4)
    want = float(torch.fft.fft(op.filter()[0]).abs().max() ** 2 / op.m)
    assert float(_sqnorm(op, (1, 4, 5))) == pytest.approx(want, rel=1e-8)


@pytest.mark.parametrize("op", [PartialCirculant((3, 4, 4), 20, seed=1), PartialCirculant((1, 5, 7), 11, seed=2),
                                GaussianMatrix((3, 4, 4), 20, seed=1)], ids=lambda o: f"{type(o).__name__}{o.m}")
def test_sqnorm_of_cs_is_the_largest_squared_singular_value(op):
    want = _spectral_sq(op.dense()[0])
    assert float(_sqnorm(op, op.image_shape)) == pytest.approx(want, rel=1e-7)
    # A partial circulant's rows are rows of the full one: its norm is at most the full one's.
    if isinstance(op, PartialCirculant):
        assert want <= float(torch.fft.fft(op.filter()[0]).abs().max() ** 2 / op.m) * (1 + 1e-12)


def _sr_matrix_1d(length: int, factor: int, padding: str) -> torch.Tensor:
    # The 1-D filter as a matrix: output j reads inputs j * s + t (t >= t_min) through the padding.
    t_min, w = bicubic_taps(factor)
    if padding == "circular":
        index = lambda p: p % length  # noqa: E731
    else:
        table = pad_index(length, -t_min, len(w), padding)
        index = lambda p: int(table[p - t_min])  # noqa: E731
    mat = torch.zeros(length // factor, length, dtype=F64)
    for j in range(length // factor):
        for k, wk in enumerate(w):
            mat[j, index(j * factor + t_min + k)] += wk
    return mat


@pytest.mark.parametrize("factor,padding,shape", [(2, "circular", (1, 8, 12)), (3, "circular", (2, 9, 6)),
                                                  (2, "reflect", (1, 8, 8)), (4, "symmetric", (1, 16, 8))])
def test_sqnorm_of_sr_is_the_product_of_its_separable_norms(factor, padding, shape):
    # A = A_H (x) A_W on each channel, so ||A||^2 = ||A_H||^2 ||A_W||^2.
    _, h, w = shape
    want = _spectral_sq(_sr_matrix_1d(h, factor, padding)) * _spectral_sq(_sr_matrix_1d(w, factor, padding))
    op = BicubicDownsample(factor, padding)
    assert float(_sqnorm(op, shape)) == pytest.approx(want, rel=1e-7)
    assert _spectral_sq(_dense_of(op, shape)) == pytest.approx(want, rel=1e-10)  # the 1-D matrices are A's


def test_sqnorm_of_compositions_and_stacks():
    op = Compose(BicubicDownsample(2), Inpainting(_mask(3, 3)))
    assert float(_sqnorm(op, (1, 6, 6))) == pytest.approx(_spectral_sq(_dense_of(op, (1, 6, 6))), rel=1e-7)
    ops = _per_problem(CompressedSensing(ratio=0.5, kind="gaussian", shared=False), (1, 4, 4))
    got = _sqnorm(Operator.stack(ops), (1, 4, 4))
    assert got.shape == (3,)
    torch.testing.assert_close(got, torch.tensor([_spectral_sq(o.dense()[0]) for o in ops], dtype=F64),
                               rtol=1e-7, atol=0)
    assert len(set(got.tolist())) == 3  # one norm per problem
    with pytest.raises(ValueError, match="max_iter >= 1 and tol >= 0"):
        op.compute_sqnorm((1, 6, 6), max_iter=0)


# ---------------------------------------------------------------------------
# Specs declare the problem's name; the measurement loss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec,shape",
    [(BoxMask([0, 1, 0, 1]), (3, 4, 4)), (RandomMask(0.5), (3, 4, 4)), (Denoising(5), (3, 4, 4)),
     (SuperResolution(2), (3, 4, 4)), (CompressedSensing(m=4), (3, 4, 4)),
     (ComposeSpec([SuperResolution(2), Denoising(5)]), (3, 4, 4))],
    ids=lambda v: type(v).__name__,
)
def test_every_spec_takes_the_problem_name(spec, shape):
    x = _rand((1, *shape), 0, dtype=torch.float32)
    a = spec.build(shape, 3, name="img_0.png")(x, _g())
    assert torch.equal(a, spec.build(shape, 3)(x, _g()))  # the name changes nothing here


def test_file_mask_folder_through_compose_spec(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 4), 255, dtype=np.uint8)).save(tmp_path / "face.png")
    spec = ComposeSpec([FileMask(tmp_path), Denoising(5)])
    assert spec.build((3, 4, 4), 0, name="face.jpg").ops[0].mask.sum() == 16
    with pytest.raises(ValueError, match="a folder of masks needs the problem's name"):
        spec.build((3, 4, 4), 0)


def test_measurement_loss_is_the_operators_measurement_error():
    op = Inpainting(_mask(4, 4))
    image, y = _rand((2, 3, 4, 4), 0), _rand((2, 3, 4, 4), 1)
    ctx = LossContext(image=image, measured=op.A(image), observation=y, operator=op, state={}, groups={}, split=0)
    torch.testing.assert_close(MeasurementLoss()(ctx), op.measurement_error(op.A(image), y))
    with pytest.warns(DeprecationWarning, match="MSELoss is deprecated.*use ilo_pl.losses.MeasurementLoss"):
        old = MSELoss()
    assert isinstance(old, MeasurementLoss) and torch.equal(old(ctx), MeasurementLoss()(ctx))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MeasurementLoss()  # the new name does not warn


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
    assert isinstance(noisy, LinearCompose) and noisy.ops[-1].sigma == 25 and noisy.noise_model.sigma == 25


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


def test_a_spec_without_the_name_argument_is_refused_when_defined():
    from ilo_pl.operators.base import OperatorSpec

    with pytest.raises(TypeError, match=r"OldSpec.build must accept the problem's name: .*name=None"):
        class OldSpec(OperatorSpec):  # noqa: F841 - defining it is the test
            def build(self, image_shape, seed):  # noqa: ANN001, ANN201
                return None

    class NewSpec(OperatorSpec):
        def build(self, image_shape, seed, name=None):  # noqa: ANN001, ANN201
            return None

    assert NewSpec().build((3, 4, 4), 0) is None
