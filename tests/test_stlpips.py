"""ST-LPIPS (shift-tolerant LPIPS): ilo-pl's adapter, the loss term, the metric and the benchmark column.

The adapter (:mod:`ilo_pl.losses.stlpips`) builds the networks itself and
loads the weight files shipped in ``stlpips-pytorch``; it must give the
reference implementation's distances. Those are stored in
``tests/fixtures/stlpips_reference.json`` (computed once by
``tests/fixtures/stlpips_reference.py``, which imports the reference); the
inputs are rebuilt here from seeds and scikit-image's sample photos, so the
suite never imports the reference package's code.
"""

from __future__ import annotations

import csv
import importlib.resources
import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from torch import nn

from ilo_pl import metrics
from ilo_pl.losses import LPIPSLoss, MeasurementLoss, PerceptualLoss, STLPIPSLoss
from ilo_pl.losses.base import LossContext, weighted_sum
from ilo_pl.losses.stlpips import MIN_SIZE, NETS, STLPIPS, BlurPool2d, _unit, stlpips_network, weights_path
from ilo_pl.operators.base import Identity
from ilo_pl.operators.cs import CompressedSensing
from ilo_pl.operators.inpainting import Inpainting
from ilo_pl.operators.superres import SuperResolution

_SPEC = importlib.util.spec_from_file_location("stlpips_cases", Path(__file__).parent / "fixtures" / "stlpips_reference.py")
cases = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cases)  # type: ignore[union-attr]
REFERENCE = json.loads(cases.JSON.read_text())


@pytest.fixture(scope="module")
def nets() -> Dict[str, STLPIPS]:
    return {net: stlpips_network(net) for net in NETS}


@pytest.fixture(scope="module")
def alex_loss() -> STLPIPSLoss:
    """The loss term on images as they are (no resize: 64x64 and 32x32 test images, cheap on a CPU)."""
    return STLPIPSLoss(net="alex", resize=None)


def ctx_for(op: Any, image: torch.Tensor, y: torch.Tensor) -> LossContext:
    return LossContext(image=image, measured=op.A(image), observation=y, operator=op, state={}, groups={}, split=0)


def smooth(b: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, size // 8, size // 8, generator=g) * 2 - 1
    return nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- the network
@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("size", cases.SIZES)
def test_conformance_to_the_reference_implementation(nets: Dict[str, STLPIPS], net: str, size: int) -> None:
    """Float32 distances of seeded and photo pairs (incl. a 1-2 pixel shift) equal stlpips_pytorch 0.0.2's."""
    x, y = cases.cases(size)
    with torch.no_grad():
        got = nets[net](x, y)
    want = torch.tensor(REFERENCE["values"][f"{net}_{size}"])
    assert got.dtype == torch.float32 and got.shape == want.shape == (len(cases.PAIRS),)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # ST-LPIPS's point: a 1-2 pixel shift of a photo is closer than any other pair here.
    shift = cases.PAIRS.index("astronaut_shift")
    assert got[shift] == got.min()


def test_batch_equals_per_sample(nets: Dict[str, STLPIPS]) -> None:
    x, y = cases.cases(64)
    with torch.no_grad():
        whole = nets["alex"](x, y)
        parts = torch.cat([nets["alex"](x[i : i + 1], y[i : i + 1]) for i in range(x.shape[0])])
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("net", NETS)
def test_identical_images_give_zero(nets: Dict[str, STLPIPS], net: str) -> None:
    x, _ = cases.cases(64)
    with torch.no_grad():
        assert torch.equal(nets[net](x, x.clone()), torch.zeros(x.shape[0]))


def test_gradients_reach_the_input_gradcheck_float64(nets: Dict[str, STLPIPS]) -> None:
    """gradcheck of the AlexNet distance on its smallest input, in float64, w.r.t. both images."""
    model = STLPIPS("alex")
    model.load_state_dict(nets["alex"].state_dict())
    model = model.double().requires_grad_(False)
    s = MIN_SIZE["alex"]
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, s, s, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    y = (torch.rand(1, 3, s, s, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    assert torch.autograd.gradcheck(model, (x, y), fast_mode=True, eps=1e-6, atol=1e-5, rtol=1e-3)
    model(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_unit_normalisation_has_a_finite_gradient_at_zero_features() -> None:
    f = torch.zeros(1, 4, 2, 2, requires_grad=True)
    _unit(f).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    g = torch.randn(2, 5, 3, 3)
    # Otherwise the reference's f / (||f|| + 1e-10).
    torch.testing.assert_close(_unit(g), g / (g.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))


@pytest.mark.parametrize("net", NETS)
def test_weights_are_the_shipped_files_frozen_in_eval_mode(nets: Dict[str, STLPIPS], net: str) -> None:
    model = nets[net]
    shipped = torch.load(weights_path(net), map_location="cpu", weights_only=True)
    own = model.state_dict()
    assert set(own) == set(shipped)  # strict: every key, nothing left random
    for key, value in shipped.items():
        assert torch.equal(own[key], value), key
    assert all(not p.requires_grad for p in model.parameters())
    parent = nn.ModuleDict({"m": model}).train()
    assert parent.training and not any(m.training for m in model.modules())
    # The blur pools are the binomial [1, 2, 1] filter, as a freshly built BlurPool2d's.
    blurs = [m for m in model.modules() if isinstance(m, BlurPool2d)]
    assert len(blurs) == (3 if net == "alex" else 4)
    for b in blurs:
        torch.testing.assert_close(b.filt, BlurPool2d(b.filt.shape[0]).filt)
        assert (b.pad, b.stride) == (2, 2)
    assert (model.lin0.model[1].weight >= 0).all()


def test_the_reference_package_code_is_never_imported(nets: Dict[str, STLPIPS]) -> None:
    weights_path("vgg")
    assert not any(m.startswith("stlpips_pytorch.") for m in sys.modules), [
        m for m in sys.modules if m.startswith("stlpips_pytorch.")
    ]


def test_missing_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "stlpips_pytorch" else real(name, *a))
    missing = r"stlpips-pytorch package, which is not installed: .*pip install stlpips-pytorch"
    with pytest.raises(FileNotFoundError, match=missing):
        stlpips_network("alex")
    with pytest.raises(FileNotFoundError, match="pip install stlpips-pytorch"):
        STLPIPSLoss(net="vgg")


def test_missing_weight_file_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.resources, "files", lambda name: tmp_path)
    match = r"not in the installed stlpips-pytorch package \(looked for .*alex_shift_tolerant\.pth\).*pip install stlpips-pytorch"
    with pytest.raises(FileNotFoundError, match=match):
        weights_path("alex")


def test_given_weight_files_missing_or_of_another_network(tmp_path: Path, nets: Dict[str, STLPIPS]) -> None:
    with pytest.raises(FileNotFoundError, match="ST-LPIPS 'alex' weights file .*nope.pth does not exist"):
        stlpips_network("alex", weights=tmp_path / "nope.pth")
    other = tmp_path / "vgg_as_alex.pth"
    torch.save(nets["vgg"].state_dict(), other)
    with pytest.raises(ValueError, match=r"does not fit ST-LPIPS 'alex': missing keys .*unexpected keys"):
        stlpips_network("alex", weights=other)
    with pytest.raises(ValueError, match="unknown ST-LPIPS network 'squeeze'"):
        stlpips_network("squeeze")


def test_too_small_images_are_refused(nets: Dict[str, STLPIPS]) -> None:
    for net, s in MIN_SIZE.items():
        x = torch.zeros(1, 3, s, s)
        assert nets[net](x, x).item() == 0
        with pytest.raises(ValueError, match=rf"at least {s}x{s}"):
            nets[net](x[..., :-1, :], x[..., :-1, :])


# --------------------------------------------------------------------------- the loss term
def test_loss_is_a_perceptual_term_like_lpips(alex_loss: STLPIPSLoss) -> None:
    assert isinstance(alex_loss, PerceptualLoss) and issubclass(LPIPSLoss, PerceptualLoss)
    x, y = smooth(2), smooth(2, seed=1)
    torch.testing.assert_close(alex_loss(ctx_for(Identity(), x, y)), alex_loss.stlpips(x, y))
    assert torch.equal(alex_loss(ctx_for(Identity(), x, x.clone())), torch.zeros(2))
    assert "net='alex'" in repr(alex_loss) and alex_loss.net == "alex"


def test_loss_gradients_reach_the_image_not_the_network(alex_loss: STLPIPSLoss) -> None:
    x = smooth(2).requires_grad_(True)
    alex_loss(ctx_for(Identity(), x, smooth(2, seed=3))).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in alex_loss.parameters())
    parent = nn.ModuleDict({"stlpips": alex_loss}).train()
    assert parent.training and not any(m.training for m in alex_loss.modules())


def test_loss_resizes_to_256_by_default() -> None:
    loss = STLPIPSLoss(net="alex")
    assert loss.resize == 256 and loss.space == "auto"
    a, b = loss.prepare(smooth(1, 32), smooth(1, 32, seed=1))
    assert a.shape == b.shape == (1, 3, 256, 256)


def test_inpainting_compares_with_the_superimposed_observation(alex_loss: STLPIPSLoss) -> None:
    truth = smooth(1)
    mask = torch.ones(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 0
    op = Inpainting(mask)
    y = op(truth)
    guess = truth * mask + smooth(1, seed=4) * (1 - mask)
    assert alex_loss(ctx_for(op, guess, y)).item() == 0  # the hole is filled with the guess itself
    assert alex_loss.distance(guess, y).item() > 1e-3
    moved = guess.clone()
    moved[..., :16, :] += 0.5
    assert alex_loss(ctx_for(op, moved, y)).item() > 1e-3


def test_superres_compares_at_the_observations_resolution(alex_loss: STLPIPSLoss) -> None:
    """2x of 64x64: A(G(v)) against y, 32x32 into the network, as LPIPSLoss does."""
    op = SuperResolution(factor=2).build((3, 64, 64), seed=0)
    truth, other = smooth(1), smooth(1, seed=6)
    y = op(truth)
    assert y.shape == (1, 3, 32, 32)
    assert alex_loss(ctx_for(op, truth, y)).abs().item() < 1e-6
    got = alex_loss(ctx_for(op, other, y))
    torch.testing.assert_close(got, alex_loss.stlpips(op.A(other), y))
    assert got.item() > 1e-3
    x = other.clone().requires_grad_(True)
    alex_loss(ctx_for(op, x, y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # 4x leaves 16x16: too small for the network without a resize, and the message says so.
    op4 = SuperResolution(factor=4).build((3, 64, 64), seed=0)
    with pytest.raises(ValueError, match=r"at least 21x21.*\(16, 16\).*give STLPIPSLoss a resize"):
        alex_loss(ctx_for(op4, truth, op4(truth)))


def test_non_image_measurements_are_refused_with_the_fix(alex_loss: STLPIPSLoss) -> None:
    op = CompressedSensing(ratio=0.1).build((3, 64, 64), seed=0)
    x = smooth(1)
    with pytest.raises(ValueError, match=r"ST-LPIPS needs image-space observations, but \w+ measurements.*drop the 'stlpips'"):
        alex_loss(ctx_for(op, x, op(x)))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown ST-LPIPS network 'squeeze'"):
        STLPIPSLoss(net="squeeze")
    with pytest.raises(ValueError, match="unknown ST-LPIPS space 'measurement'"):
        STLPIPSLoss(net="alex", space="measurement")
    with pytest.raises(ValueError, match="resize must be None or an int >= 18"):
        STLPIPSLoss(net="vgg", resize=16)


def test_loss_weights_and_a_solve_use_it_by_name(alex_loss: STLPIPSLoss) -> None:
    """Weighted like any term (``loss_weights: {mse: 1, stlpips: w}``), and a DCGAN solve runs with it."""
    op = SuperResolution(factor=2).build((3, 64, 64), seed=0)
    x, truth = smooth(2), smooth(2, seed=9)
    terms = {"mse": MeasurementLoss(), "stlpips": alex_loss}
    ctx = ctx_for(op, x, op(truth))
    total, values = weighted_sum(terms, [("mse", 1.0), ("stlpips", 0.5)], ctx, 2)
    torch.testing.assert_close(total, values["mse"] + 0.5 * values["stlpips"])
    torch.testing.assert_close(values["stlpips"], alex_loss.stlpips(op.A(x), op(truth)))

    from ilo_pl.api import solve
    from ilo_pl.modules.generators import DCGANGenerator
    from ilo_pl.stages import Stage

    G = DCGANGenerator()
    y = op(truth)
    result = solve(G, op, y, [Stage(0, 3), Stage(1, 2, radius={"state": 500.0})], losses=terms,
                   loss_weights={"mse": 1.0, "stlpips": 0.1}, target=truth)
    assert result.images.shape == (2, 3, 64, 64) and torch.isfinite(result.measurement_loss).all()


def test_configs_name_it_like_lpips(tmp_path: Path) -> None:
    from ilo_pl.config import build_from_config

    root = Path(__file__).resolve().parents[1]
    extra = tmp_path / "stlpips.yaml"
    extra.write_text(
        "model:\n"
        "  losses:\n"
        "    mse: {class_path: ilo_pl.losses.MeasurementLoss}\n"
        "    stlpips: {class_path: ilo_pl.losses.STLPIPSLoss, init_args: {net: alex, resize: null, space: observation}}\n"
        "  loss_weights: {mse: 1.0, stlpips: 0.1}\n"
        "data:\n"
        "  operator: {class_path: ilo_pl.operators.SuperResolution, init_args: {factor: 2}}\n"
    )
    built = build_from_config([root / "configs" / "superres.yaml", extra])
    term = built.module.losses["stlpips"]
    assert isinstance(term, STLPIPSLoss) and term.net == "alex" and term.resize is None
    assert term.space == "observation" and built.module.loss_weights["stlpips"] == 0.1


# ------------------------------------------------------------------------------ the metric
def test_metric_clamps_and_matches_the_network(nets: Dict[str, STLPIPS]) -> None:
    x, y = cases.cases(64)
    got = metrics.stlpips(x * 1.5, y)
    torch.testing.assert_close(got, nets["alex"](x.mul(1.5).clamp(-1, 1), y))
    vgg = metrics.stlpips(x, y, net="vgg")
    torch.testing.assert_close(vgg, torch.tensor(REFERENCE["values"]["vgg_64"]), rtol=1e-5, atol=1e-7)
    assert torch.equal(metrics.stlpips(x, x), torch.zeros(x.shape[0]))


def test_metric_resizes_large_images_to_max_size(nets: Dict[str, STLPIPS]) -> None:
    x, y = cases.cases(128)
    small = nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    small_y = nn.functional.interpolate(y, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(metrics.stlpips(x, y, max_size=64), nets["alex"](small, small_y))
    assert metrics.STLPIPS_MAX_SIZE == 256
    torch.testing.assert_close(metrics.stlpips(x, y), torch.tensor(REFERENCE["values"]["alex_128"]), rtol=1e-5, atol=1e-7)


def test_image_metrics_adds_stlpips_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = cases.cases(64)
    plain = metrics.image_metrics(x, y)
    assert set(plain) == {"true_mse", "psnr", "ssim"}
    full = metrics.image_metrics(x, y, perceptual=True)
    torch.testing.assert_close(full["stlpips"], metrics.stlpips(x, y))
    assert "stlpips" not in metrics.image_metrics(x[..., :16, :16], y[..., :16, :16], perceptual=True)

    def missing(net: str, device: torch.device) -> nn.Module:
        raise FileNotFoundError("the ST-LPIPS 'alex' weights come from the stlpips-pytorch package, which is not installed")

    monkeypatch.setattr(metrics, "_stlpips_network", missing)
    monkeypatch.setattr(metrics, "_warned_missing", False)
    with pytest.warns(UserWarning, match="stlpips metric is left empty: .*stlpips-pytorch"):
        out = metrics.image_metrics(x, y, perceptual=True)
    assert set(out) == {"true_mse", "psnr", "ssim"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process
        assert metrics.stlpips_or_none(x, y) is None


# ---------------------------------------------------------------------------- the benchmark
def test_quality_benchmark_column_report_and_legacy_csvs(tmp_path: Path) -> None:
    from benchmarks import quality, report

    assert quality.COLUMNS.index("stlpips") == quality.COLUMNS.index("lpips") + 1
    # A CSV written before the column: upgraded in place, every value kept, the new column empty.
    legacy = tmp_path / "quality.csv"
    row = {c: str(i) for i, c in enumerate(quality.LEGACY_COLUMNS)}
    row.update(run="full", task="denoising", level="50", method="ilo", protocol="primary", image="a", config="c")
    with open(legacy, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=quality.LEGACY_COLUMNS)
        w.writeheader()
        w.writerow(row)
    store = quality.CsvLog(legacy)
    with open(legacy, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == quality.COLUMNS and rows[0]["stlpips"] == ""
    assert all(rows[0][k] == v for k, v in row.items())
    assert store.has("full", "denoising", "50", "ilo", ["a"], "c")
    # The report's table of the column.
    rows[0].update(stlpips="0.25", true_mse="0.01")
    table = report.results_table(rows)
    assert "ST-LPIPS (AlexNet; shift-tolerant LPIPS, not the paper's LPIPS)" in table and "0.2500" in table
    assert "ST-LPIPS: not measured" in report.results_table([dict(rows[0], stlpips="")])
    assert quality.stlpips_reason().startswith("ST-LPIPS (alex) from ")


# ------------------------------------------------------------------------------ results.csv
def test_results_csv_has_the_stlpips_column(tmp_path: Path) -> None:
    """The ResultWriter's results.csv: ST-LPIPS (AlexNet) of each saved reconstruction against its target."""
    from ilo_pl.api import solve
    from ilo_pl.callbacks.writer import ResultWriter
    from ilo_pl.io import load_image
    from ilo_pl.modules.generators import DCGANGenerator
    from ilo_pl.resume import CSV_FIELDS
    from ilo_pl.stages import Stage

    assert CSV_FIELDS[12] == "stlpips"  # after the older columns (later ones, e.g. restart, follow it)
    op = SuperResolution(factor=2).build((3, 64, 64), seed=0)
    truth = smooth(2, seed=11)
    writer = ResultWriter(output_dir=tmp_path)
    result = solve(DCGANGenerator(), op, op(truth), [Stage(0, 2)], target=truth, ids=["a", "b"], callbacks=[writer],
                   trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False, "logger": False})
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    with open(run / "results.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    want = metrics.stlpips(result.images, truth)
    for b, pid in enumerate(["a", "b"]):
        assert float(rows[pid]["stlpips"]) == pytest.approx(float(want[b]), rel=1e-5), pid
        # It measures the image written to disk, up to the PNG's 8-bit rounding.
        png = load_image(run / f"{pid}_reconstruction.png")[None]
        assert float(rows[pid]["stlpips"]) == pytest.approx(float(metrics.stlpips(png, truth[b : b + 1])), abs=5e-3)
