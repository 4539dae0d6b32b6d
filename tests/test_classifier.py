"""Tests of classifier guidance: classifiers, ClassifierOperator, ClassGuidance, ClassifierLoss."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ilo_pl.classifiers import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier, build_classifier
from ilo_pl.losses.base import LossContext, MeasurementLoss
from ilo_pl.losses.classifier import ClassifierLoss
from ilo_pl.operators.base import Identity
from ilo_pl.operators.classifier import ClassGuidance, ClassifierOperator, as_class_indices

F64 = torch.float64


def tiny_net(k: int = 5, c: int = 3, seed: int = 0) -> nn.Module:
    """A small random classifier on normalised images (with BatchNorm, to test eval mode)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, k),
    )


def tiny_classifier(k: int = 5, input_size: int = 8, dtype: torch.dtype = torch.float32) -> ImageClassifier:
    return ImageClassifier(tiny_net(k), IMAGENET_MEAN, IMAGENET_STD, input_size, num_classes=k).to(dtype)


def ctx_for(op: Any, image: torch.Tensor, y: torch.Tensor, with_err: bool = False) -> LossContext:
    measured = op.A(image)
    kw = {}
    if with_err:
        kw["measurement_error"] = op.measurement_error(measured, y)
    return LossContext(image=image, measured=measured, observation=y, operator=op, state={}, groups={},
                       split=0, **kw)


# ----------------------------------------------------------------- ImageClassifier
def test_image_classifier_preprocessing_matches_by_hand() -> None:
    clf = tiny_classifier(input_size=(8, 6))
    x = torch.rand(2, 3, 5, 5) * 2 - 1
    pre = clf.preprocess(x)
    assert pre.shape == (2, 3, 8, 6)
    expect = torch.nn.functional.interpolate((x + 1) / 2, size=(8, 6), mode="bilinear",
                                             align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(pre, (expect - mean) / std)
    # a constant -1 image is black: (0 - mean) / std at every pixel
    black = clf.preprocess(-torch.ones(1, 3, 8, 6))
    torch.testing.assert_close(black, ((0 - mean) / std).expand(1, 3, 8, 6))


def test_image_classifier_is_frozen_and_stays_in_eval() -> None:
    clf = tiny_classifier()
    assert all(not p.requires_grad for p in clf.parameters())
    clf.train()
    assert not clf.training and not any(m.training for m in clf.modules())
    parent = nn.ModuleDict({"c": clf}).train()
    assert parent.training and not clf.net[1].training


def test_image_classifier_bad_input() -> None:
    with pytest.raises(TypeError, match="wraps an nn.Module"):
        ImageClassifier(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mean has 3 channels but std has 2"):
        ImageClassifier(tiny_net(), (0.5, 0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match="every std must be > 0"):
        ImageClassifier(tiny_net(), (0.5, 0.5, 0.5), (0.5, 0.0, 0.5))
    clf = tiny_classifier()
    with pytest.raises(ValueError, match="expects 3-channel images; got 1"):
        clf(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"float tensor \[B, C, H, W\]"):
        clf(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="returned 5 logits but was declared with num_classes=7"):
        ImageClassifier(tiny_net(5), num_classes=7, input_size=8)(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown classifier 'vit'"):
        build_classifier("vit")


# --------------------------------------------------------------- ClassifierOperator
def test_operator_logits_and_cross_entropy() -> None:
    op = ClassifierOperator(tiny_classifier())
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    y = torch.tensor([0, 4, 2])
    logits = op.A(x)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(op(x), logits)  # forward = noise(A(x)) with identity noise
    err = op.measurement_error(logits, y)
    expect = -logits.log_softmax(1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(err, expect)
    torch.testing.assert_close(torch.exp(-err), op.probabilities(x)[torch.arange(3), y])
    torch.testing.assert_close(op.predict(x), logits.argmax(1))
    assert op.superimpose(x, y) is None


def test_operator_batch_equals_per_sample() -> None:
    op = ClassifierOperator(tiny_classifier())
    x = torch.rand(4, 3, 6, 6) * 2 - 1
    y = torch.tensor([1, 0, 3, 3])
    whole = op.measurement_error(op.A(x), y)
    parts = torch.cat([op.measurement_error(op.A(x[i : i + 1]), y[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, parts)


def test_operator_gradcheck_float64() -> None:
    op = ClassifierOperator(tiny_classifier(k=4, input_size=6, dtype=F64))
    x = (torch.rand(1, 3, 4, 4, dtype=F64) * 2 - 1).requires_grad_(True)
    y = torch.tensor([3])
    assert torch.autograd.gradcheck(lambda v: op.measurement_error(op.A(v), y), (x,))


def test_float_indices_accepted_and_validated() -> None:
    op = ClassifierOperator(tiny_classifier())
    logits = op.A(torch.zeros(2, 3, 8, 8))
    torch.testing.assert_close(
        op.measurement_error(logits, torch.tensor([2.0, 4.0])),
        op.measurement_error(logits, torch.tensor([2, 4])),
    )
    with pytest.raises(ValueError, match="class observation 2.5 is not an integer class index"):
        op.measurement_error(logits, torch.tensor([2.0, 2.5]))
    with pytest.raises(ValueError, match="NaN or inf"):
        as_class_indices(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="dtype torch.bool"):
        as_class_indices(torch.tensor([True]))
    with pytest.raises(ValueError, match=r"1-D tensor \[B\]"):
        as_class_indices(torch.tensor([[1, 2]]))


def test_check_observation_index_out_of_range() -> None:
    op = ClassifierOperator(tiny_classifier(k=5))
    x = torch.zeros(2, 3, 8, 8)
    op.check_observation(torch.tensor([0, 4]), x)  # fine
    with pytest.raises(ValueError, match=r"class index 5 is out of range .* K=5 classes \(valid indices are 0..4\)"):
        op.check_observation(torch.tensor([0, 5]), x)
    with pytest.raises(ValueError, match="class index -1 is out of range"):
        op.check_observation(torch.tensor([-1, 0]), x)
    with pytest.raises(ValueError, match="3 class observations for 2 images"):
        op.check_observation(torch.tensor([0, 1, 2]), x)
    # K unknown: found from the logits
    bare = ClassifierOperator(tiny_net(6), mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=8)
    assert bare.num_classes is None
    with pytest.raises(ValueError, match="class index 6 is out of range .* K=6"):
        bare.check_observation(torch.tensor([6, 0]), x)


def test_operator_bad_construction() -> None:
    with pytest.raises(ValueError, match="needs the mean and std"):
        ClassifierOperator(tiny_net())
    with pytest.raises(TypeError, match="needs an nn.Module classifier"):
        ClassifierOperator("resnet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already carries its preprocessing"):
        ClassifierOperator(tiny_classifier(), mean=IMAGENET_MEAN)
    op = ClassifierOperator(tiny_net(), mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=8)
    assert op.A(torch.zeros(1, 3, 4, 4)).shape == (1, 5)


# ------------------------------------------------------------------- ClassGuidance
def test_class_guidance_spec() -> None:
    spec = ClassGuidance(3, classifier=tiny_classifier(k=5))
    assert spec.shared
    op = spec.build((3, 16, 16), seed=0)
    assert isinstance(op, ClassifierOperator)
    assert spec.build((3, 16, 16), seed=1) is op  # one classifier for all problems
    y = spec.target_observation(4)
    assert y.dtype == torch.long and y.tolist() == [3, 3, 3, 3]
    op.check_observation(y, torch.zeros(4, 3, 16, 16))
    # what the data module calls: the observation of any image is the target class
    obs = spec.observe(op, torch.rand(1, 3, 16, 16), torch.Generator().manual_seed(0))
    assert obs.dtype == torch.long and obs.tolist() == [3]
    with pytest.raises(ValueError, match=r"class index 5 is out of range .* K=5"):
        ClassGuidance(5, classifier=tiny_classifier(k=5))
    with pytest.raises(ValueError, match="target must be a class index >= 0"):
        ClassGuidance(-2, classifier=tiny_classifier())
    with pytest.raises(ValueError, match="needs checkpoint="):
        ClassGuidance(1, classifier="robust")
    with pytest.raises(ValueError, match="takes 3-channel images but the generator makes 1-channel"):
        spec.build((1, 16, 16), seed=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        spec.target_observation(0)


# ------------------------------------------------------------------- ClassifierLoss
def test_classifier_loss_with_operator_equals_mse_term() -> None:
    op = ClassifierOperator(tiny_classifier())
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    y = torch.tensor([1, 3])
    for with_err in (False, True):
        ctx = ctx_for(op, x, y, with_err)
        torch.testing.assert_close(ClassifierLoss()(ctx), MeasurementLoss()(ctx))
        torch.testing.assert_close(ClassifierLoss()(ctx), op.measurement_error(op.A(x), y))


def test_classifier_loss_own_classifier() -> None:
    clf = tiny_classifier()
    x = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_(True)
    ctx = ctx_for(Identity(), x, x.detach())
    loss = ClassifierLoss(clf, target=2)
    logits = clf(x)
    torch.testing.assert_close(loss(ctx), -logits.log_softmax(1)[:, 2])
    per = ClassifierLoss(clf, target=[0, 4])(ctx)
    torch.testing.assert_close(per, -logits.log_softmax(1)[[0, 1], [0, 4]])
    per.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not any(m.training for m in loss.modules())
    with pytest.raises(ValueError, match="has 3 targets for a batch of 2"):
        ClassifierLoss(clf, target=[0, 1, 2])(ctx)


def test_classifier_loss_bad_input() -> None:
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="needs a ClassifierOperator problem .* operator is Identity"):
        ClassifierLoss()(ctx_for(Identity(), x, x))
    with pytest.raises(ValueError, match="got a target but no classifier"):
        ClassifierLoss(target=3)
    with pytest.raises(ValueError, match="needs target="):
        ClassifierLoss(tiny_classifier())
    with pytest.raises(ValueError, match="class index 9 is out of range .* K=5"):
        ClassifierLoss(tiny_classifier(k=5), target=9)


# --------------------------------------------------------- robustness (MadryLab) path
def _madrylab_checkpoint(path: Any, net: nn.Module, mean: List[float], std: List[float], **extra: Any) -> None:
    sd: Dict[str, torch.Tensor] = {}
    for k, v in net.state_dict().items():
        sd[f"module.model.{k}"] = v
        sd[f"module.attacker.model.{k}"] = v
    for pre in ("module.normalizer.", "module.attacker.normalize."):
        sd[pre + "new_mean"] = torch.tensor(mean).view(3, 1, 1)
        sd[pre + "new_std"] = torch.tensor(std).view(3, 1, 1)
    torch.save({"model": sd, "epoch": 7, **extra}, path)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    from ilo_pl.classifiers.robustness_compat import build_arch

    torch.manual_seed(0)
    net = build_arch("resnet18", num_classes=10)
    # BatchNorm statistics that are not the identity, so eval mode matters
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_robustness_checkpoint_loads_and_runs_on_cpu(tmp_path: Any, resnet18: nn.Module) -> None:
    from ilo_pl.classifiers.robustness_compat import load_robust_classifier

    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    path = tmp_path / "robust_r18.pt"
    _madrylab_checkpoint(path, resnet18, mean, std)
    clf = load_robust_classifier(path, arch="resnet18", num_classes=10, input_size=32)
    assert "torchvision.models.utils" in sys.modules  # the shim made robustness importable
    assert "robustness.model_utils" not in sys.modules  # its .cuda() path is never imported
    assert clf.name == "robustness-resnet18@epoch7"
    assert all(not p.requires_grad for p in clf.parameters())
    x = torch.rand(2, 3, 20, 20) * 2 - 1
    got = clf(x)
    pre = torch.nn.functional.interpolate((x + 1) / 2, size=(32, 32), mode="bilinear",
                                          align_corners=False, antialias=True)
    pre = (pre - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expect = resnet18(pre)
    assert got.shape == (2, 10)
    torch.testing.assert_close(got, expect)
    # and through the spec, on CPU
    spec = ClassGuidance(4, classifier=clf)
    op = spec.build((3, 20, 20), 0)
    assert op.measurement_error(op.A(x), spec.target_observation(2)).shape == (2,)


def test_robustness_checkpoint_missing(tmp_path: Any) -> None:
    from ilo_pl.classifiers.robustness_compat import load_robust_classifier

    with pytest.raises(FileNotFoundError, match="robustness checkpoint .*nope.pt does not exist"):
        load_robust_classifier(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClassGuidance(1, classifier="robust", checkpoint=tmp_path / "nope.pt")


def test_robustness_checkpoint_of_another_architecture(tmp_path: Any, resnet18: nn.Module) -> None:
    from ilo_pl.classifiers.robustness_compat import load_robust_classifier

    path = tmp_path / "r18.pt"
    _madrylab_checkpoint(path, resnet18, list(IMAGENET_MEAN), list(IMAGENET_STD))
    with pytest.raises(ValueError, match=r"not a robustness 'resnet34' checkpoint .*missing keys \['layer1\.2\."):
        load_robust_classifier(path, arch="resnet34", num_classes=10)
    with pytest.raises(ValueError, match=r"mis-shaped keys fc.bias \(10,\) != \(1000,\), fc.weight"):
        load_robust_classifier(path, arch="resnet18", num_classes=1000)
    # an extra key in the classifier's part
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["module.model.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
        load_robust_classifier(path, arch="resnet18", num_classes=10)
    with pytest.raises(ValueError, match="unknown robustness ImageNet architecture 'resnet7'"):
        load_robust_classifier(path, arch="resnet7")


def test_robustness_checkpoint_with_pickled_objects(tmp_path: Any, resnet18: nn.Module) -> None:
    from ilo_pl.classifiers.robustness_compat import load_robust_classifier

    path = tmp_path / "with_args.pt"
    _madrylab_checkpoint(path, resnet18, list(IMAGENET_MEAN), list(IMAGENET_STD),
                         args=argparse.Namespace(arch="resnet18"))
    with pytest.raises(ValueError, match=r"refuses \(WeightsUnpickler error: Unsupported global: GLOBAL argparse.Namespace.*allow_pickle=True"):
        load_robust_classifier(path, arch="resnet18", num_classes=10)
    clf = load_robust_classifier(path, arch="resnet18", num_classes=10, allow_pickle=True)
    assert clf(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# ---------------------------------------------------------- EfficientNet-Lite0 (offline)
@pytest.fixture(scope="module")
def lite0() -> ImageClassifier:
    from ilo_pl.classifiers.efficientnet import efficientnet_lite0

    return efficientnet_lite0()


def test_efficientnet_lite0_classifies_a_cat(lite0: ImageClassifier) -> None:
    from skimage import data

    cat = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        p = lite0(cat).softmax(1)[0]
    top5 = p.topk(5).indices.tolist()
    cats = [281, 282, 283, 284, 285]  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[0] in cats, top5
    assert float(p[cats].sum()) > 0.8
    # a wrong preprocessing (no [-1, 1] -> [0, 1] map) does not classify it as well
    assert float(lite0.net(cat).softmax(1)[0, cats].sum()) < float(p[cats].sum())


def test_efficientnet_bad_weights(tmp_path: Any) -> None:
    from ilo_pl.classifiers.efficientnet import efficientnet_lite0

    with pytest.raises(FileNotFoundError, match="weights .*missing.pth do not exist"):
        efficientnet_lite0(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="do not fit the network: missing keys"):
        efficientnet_lite0(tmp_path / "other.pth")


# ------------------------------------------------------- guidance through the engine
class _BallWatcher(pl.Callback):
    """After every step: each l1-constrained variable is inside its ball; records anchors per stage."""

    def __init__(self) -> None:
        self.worst = 0.0  # max over steps of ||v - anchor||_1 / radius
        self.anchors: Dict[int, Dict[str, torch.Tensor]] = {}
        self.radius: Dict[int, Dict[str, float]] = {}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        stage = pl_module.stage_index
        names = {id(p): n for n, p in pl_module.variables.items()}
        for param, anchor, radius in pl_module.l1_constraints():
            dev = (param.detach() - anchor).abs().flatten(1).sum(1).max().item()
            self.worst = max(self.worst, dev / radius if radius > 0 else (0.0 if dev == 0 else float("inf")))
            self.anchors.setdefault(stage, {})[names[id(param)]] = anchor.detach().cpu().clone()
            self.radius.setdefault(stage, {})[names[id(param)]] = radius


def test_classifier_guidance_turns_a_face_into_sunglasses(lite0: ImageClassifier) -> None:
    """Face (embedded DCGAN) -> ImageNet 'sunglass' (836) inside l1 balls, with the real engine."""
    from ilo_pl.api import solve
    from ilo_pl.modules.generators.dcgan import DCGANGenerator
    from ilo_pl.stages import Stage

    target, radius = 836, 300.0
    gen = DCGANGenerator()
    spec = ClassGuidance(target, classifier=lite0)
    op = spec.build(gen.image_shape, seed=0)
    with torch.no_grad():
        face = gen.render(gen.init_variables(1, torch.Generator().manual_seed(0)), 0)
        p_start = float(op.probabilities(face)[0, target])
    assert p_start < 0.05
    stages = [
        # stage 0 keeps the seed's face (radius 0 around its latent) ...
        Stage(split=0, steps=1, lr=0.01, radius={"latent": 0.0}),
        # ... then the state after block 2 moves inside an l1 ball (||h||_1 is about 1500)
        Stage(split=2, steps=5, lr=0.05, radius={"state": radius}),
    ]
    watcher = _BallWatcher()
    result = solve(gen, op, spec.target_observation(1), stages, seeds=[0], callbacks=[watcher])
    with torch.no_grad():
        p_end = float(op.probabilities(result.images)[0, target])
    print(f"p(sunglass): start {p_start:.4f} end {p_end:.4f}")
    assert p_end > 0.5, (p_start, p_end)
    assert watcher.worst <= 1 + 1e-4
    sol = result.solutions[0]
    assert sol.stage == 1 and sol.split == 2
    dev = (sol.state["h"] - watcher.anchors[1]["h"]).abs().sum().item()
    assert 0 < dev <= watcher.radius[1]["h"] * (1 + 1e-4)
    # stage 0 did not move the face at all
    assert watcher.radius[0]["h"] == 0.0
    # the solution regenerates the returned image
    with torch.no_grad():
        again = gen.render({"h": sol.state["h"]}, sol.split)
    torch.testing.assert_close(again, result.images, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_robust_classifier_runs_on_the_device_of_its_inputs(tmp_path: Any, resnet18: nn.Module) -> None:
    from ilo_pl.classifiers.robustness_compat import load_robust_classifier

    path = tmp_path / "r18.pt"
    _madrylab_checkpoint(path, resnet18, list(IMAGENET_MEAN), list(IMAGENET_STD))
    clf = load_robust_classifier(path, arch="resnet18", num_classes=10, input_size=32, device="cuda")
    op = ClassifierOperator(clf)
    x = (torch.rand(2, 3, 16, 16, device="cuda") * 2 - 1).requires_grad_(True)
    err = op.measurement_error(op.A(x), torch.tensor([1, 2]))  # CPU labels follow the logits
    err.sum().backward()
    assert err.device.type == "cuda" and x.grad is not None and torch.isfinite(x.grad).all()
    cpu = load_robust_classifier(path, arch="resnet18", num_classes=10, input_size=32)
    torch.testing.assert_close(clf(x.detach()).cpu(), cpu(x.detach().cpu()), rtol=1e-3, atol=1e-3)
