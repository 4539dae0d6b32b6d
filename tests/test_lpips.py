"""Tests of the LPIPS loss term (random backbone: this machine cannot download VGG weights)."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any, List

import lpips
import pytest
import torch
from torch import nn

from ilo_pl.classifiers import ImageClassifier
from ilo_pl.losses.base import LossContext
from ilo_pl.losses.lpips import LPIPSLoss, backbone_weights_path
from ilo_pl.operators.base import Identity, LambdaOperator
from ilo_pl.operators.classifier import ClassifierOperator
from ilo_pl.operators.cs import CompressedSensing
from ilo_pl.operators.inpainting import Inpainting
from ilo_pl.operators.superres import SuperResolution


def ctx_for(op: Any, image: torch.Tensor, y: torch.Tensor) -> LossContext:
    return LossContext(image=image, measured=op.A(image), observation=y, operator=op, state={}, groups={}, split=0)


def images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth random images (a noise field upsampled) look more like images than white noise
    low = torch.rand(b, 3, size // 4, size // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def vgg() -> LPIPSLoss:
    """The default backbone, on the 32x32 test images as they are (kept small: CPU)."""
    torch.manual_seed(0)
    return LPIPSLoss(net="vgg", pnet_rand=True, resize=None)


@pytest.fixture(scope="module")
def alex() -> LPIPSLoss:
    """A cheaper backbone with the default resize (256)."""
    torch.manual_seed(0)
    return LPIPSLoss(net="alex", pnet_rand=True)


def test_zero_for_identical_positive_otherwise(vgg: LPIPSLoss) -> None:
    x = images()
    same = vgg(ctx_for(Identity(), x, x.clone()))
    assert same.shape == (2,)
    assert torch.all(same.abs() < 1e-6), same
    other = vgg(ctx_for(Identity(), x, images(seed=1)))
    assert torch.all(other > 1e-3), other


def test_batch_equals_per_sample(vgg: LPIPSLoss) -> None:
    x, y = images(3), images(3, seed=2)
    whole = vgg.distance(x, y)
    parts = torch.cat([vgg.distance(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-6)


def test_gradients_reach_the_image_not_the_network(vgg: LPIPSLoss) -> None:
    x = images().requires_grad_(True)
    loss = vgg(ctx_for(Identity(), x, images(seed=3)))
    loss.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in vgg.parameters())
    # frozen and in eval mode even inside a module that Lightning switches to train
    parent = nn.ModuleDict({"lpips": vgg}).train()
    assert parent.training and not any(m.training for m in vgg.modules())


def test_inpainting_compares_with_the_superimposed_observation(vgg: LPIPSLoss) -> None:
    truth = images(1)
    mask = torch.ones(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 0
    op = Inpainting(mask)
    y = op(truth)  # unobserved pixels are 0 in y
    # same observed pixels, different content in the hole
    guess = truth * mask + images(1, seed=4) * (1 - mask)
    filled = vgg(ctx_for(op, guess, y))
    assert filled.abs().item() < 1e-6  # the hole is filled with the guess itself: no mismatch
    # whereas comparing with y itself (black hole) is not zero
    assert vgg.distance(guess, y).item() > 1e-3
    # a difference on an observed pixel is seen
    moved = guess.clone()
    moved[..., :8, :] += 0.5
    assert vgg(ctx_for(op, moved, y)).item() > 1e-3


def test_resizes_to_256_by_default(alex: LPIPSLoss) -> None:
    loss = alex
    assert loss.resize == 256
    x = images(1)
    a, b = loss.prepare(x, x)
    assert a.shape == b.shape == (1, 3, 256, 256)
    seen: List[tuple] = []
    # lpips calls net.forward directly (no hooks there): watch its first slice
    hook = loss.lpips.net.slice1.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    with torch.no_grad():
        loss.distance(x, images(1, seed=5))
    hook.remove()
    assert seen == [(1, 3, 256, 256), (1, 3, 256, 256)]
    loss.resize = None
    try:
        assert loss.prepare(x, x)[0].shape == (1, 3, 32, 32)
    finally:
        loss.resize = 256


def test_pretrained_heads_ship_with_lpips(vgg: LPIPSLoss, alex: LPIPSLoss) -> None:
    path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    heads = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(vgg.lpips.lin0.model[-1].weight, heads["lin0.model.1.weight"])
    rand = LPIPSLoss(net="alex", pnet_rand=True, pretrained=False)
    assert not torch.equal(rand.lpips.lin0.model[-1].weight, alex.lpips.lin0.model[-1].weight)
    assert (alex.lpips.lin0.model[-1].weight >= 0).all()  # the calibrated heads are non-negative


def test_non_image_measurements_are_refused(vgg: LPIPSLoss) -> None:
    x = images(2)
    cs = LambdaOperator(lambda v: v.flatten(1)[:, :10])
    with pytest.raises(ValueError, match="LPIPS needs image-space observations, but LambdaOperator"):
        vgg(ctx_for(cs, x, cs.A(x)))
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    clf = ClassifierOperator(ImageClassifier(net, input_size=8, num_classes=4))
    with pytest.raises(ValueError, match="LPIPS needs image-space observations, but ClassifierOperator"):
        vgg(ctx_for(clf, x, torch.tensor([0, 1])))


class _resized:
    """Temporarily give a loss another ``resize`` (building a second VGG costs seconds on a CPU)."""

    def __init__(self, loss: LPIPSLoss, resize: Any) -> None:
        self.loss, self.resize = loss, resize

    def __enter__(self) -> LPIPSLoss:
        self.before = self.loss.resize
        self.loss.resize = self.resize
        return self.loss

    def __exit__(self, *exc: Any) -> None:
        self.loss.resize = self.before


class _space:
    """Temporarily compare in another ``space``."""

    def __init__(self, loss: LPIPSLoss, space: str) -> None:
        self.loss, self.space = loss, space

    def __enter__(self) -> LPIPSLoss:
        self.before = self.loss.space
        self.loss.space = self.space
        return self.loss

    def __exit__(self, *exc: Any) -> None:
        self.loss.space = self.before


def test_superres_compares_in_observation_space(vgg: LPIPSLoss) -> None:
    """The measurement is a smaller image: LPIPS of A(G(v)) against y, at the observation's resolution."""
    op = SuperResolution(factor=4).build((3, 32, 32), seed=0)
    truth, other = images(1), images(1, seed=6)
    y = op(truth)
    assert y.shape == (1, 3, 8, 8)
    with _resized(vgg, 32) as loss:
        assert loss.space == "auto"
        # No crash (it raised "LPIPS needs image-space observations" before), and zero at the truth.
        assert loss(ctx_for(op, truth, y)).abs().item() < 1e-6
        got = loss(ctx_for(op, other, y))
        torch.testing.assert_close(got, loss.distance(op.A(other), y))
        assert got.item() > 1e-3
        with _space(loss, "observation"):
            torch.testing.assert_close(loss(ctx_for(op, other, y)), got)
            # It reads the engine's measurement (with SNA noise when SNA is on), not a fresh A(x).
            ctx = ctx_for(op, other, y)
            ctx.measured = op.A(truth)
            assert loss(ctx).abs().item() < 1e-6
        # The gradient reaches the generated image through A.
        x = other.clone().requires_grad_(True)
        loss(ctx_for(op, x, y)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_image_space_refuses_observations_of_another_size(vgg: LPIPSLoss) -> None:
    op = SuperResolution(factor=4).build((3, 32, 32), seed=0)
    x = images(1)
    with _space(vgg, "image"), pytest.raises(ValueError, match=r"space='image'.*BicubicDownsample.*space='observation'"):
        vgg(ctx_for(op, x, op(x)))


def test_observation_space_on_inpainting_compares_the_masked_images(vgg: LPIPSLoss) -> None:
    truth = images(1)
    mask = torch.ones(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 0
    op = Inpainting(mask)
    y = op(truth)
    guess = truth * mask + images(1, seed=4) * (1 - mask)
    with _space(vgg, "observation"):
        assert vgg(ctx_for(op, guess, y)).abs().item() < 1e-6  # the hole is not measured
        torch.testing.assert_close(vgg(ctx_for(op, images(1, seed=7), y)), vgg.distance(op.A(images(1, seed=7)), y))


@pytest.mark.parametrize("space", ["auto", "observation"])
def test_compressed_sensing_is_refused_with_the_fix(vgg: LPIPSLoss, space: str) -> None:
    op = CompressedSensing(ratio=0.1).build((3, 32, 32), seed=0)
    x = images(1)
    with _space(vgg, space), pytest.raises(
        ValueError, match=r"LPIPS needs image-space observations, but \w+ measurements are \(1, \d+\).*drop the 'lpips'"
    ):
        vgg(ctx_for(op, x, op(x)))


def test_small_images_without_resize_are_refused(vgg: LPIPSLoss) -> None:
    op = SuperResolution(factor=4).build((3, 32, 32), seed=0)
    x = images(1)
    assert vgg.resize is None
    with pytest.raises(ValueError, match=r"at least 16x16.*\(8, 8\).*give LPIPSLoss a resize"):
        vgg(ctx_for(op, x, op(x)))


def test_bad_arguments(vgg: LPIPSLoss) -> None:
    with pytest.raises(ValueError, match="unknown LPIPS space 'measurement'"):
        LPIPSLoss(net="alex", pnet_rand=True, space="measurement")
    with pytest.raises(ValueError, match="unknown LPIPS backbone 'resnet'"):
        LPIPSLoss(net="resnet", pnet_rand=True)
    with pytest.raises(ValueError, match="resize must be None or an int >= 16"):
        LPIPSLoss(net="alex", pnet_rand=True, resize=8)
    with pytest.raises(ValueError, match="needs RGB images"):
        vgg.distance(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))


def test_backbone_download_failure_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=r"could not download .*place it at .*vgg16-397923af\.pth.*pnet_rand=True"):
        LPIPSLoss(net="vgg")


def test_backbone_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alex: LPIPSLoss) -> None:
    """A cached torchvision backbone file is loaded (weights_only) into the LPIPS slices."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    rand = alex
    torch.manual_seed(1)
    features = {}
    for key, value in rand.lpips.net.state_dict().items():
        _, idx, leaf = key.split(".", 2)
        features[f"features.{idx}.{leaf}"] = torch.randn_like(value)
    path = backbone_weights_path("alex")
    assert path.parent.parent == tmp_path
    path.parent.mkdir(parents=True)
    torch.save(features, path)
    loaded = LPIPSLoss(net="alex")
    torch.testing.assert_close(loaded.lpips.net.slice1[0].weight, features["features.0.weight"])
    torch.testing.assert_close(getattr(loaded.lpips.net.slice5, "10").weight, features["features.10.weight"])
    assert not torch.equal(loaded.lpips.net.slice1[0].weight, rand.lpips.net.slice1[0].weight)
