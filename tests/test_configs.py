"""Every shipped config runs end to end through the real CLI (``ilo-pl fit``).

* ``configs/*.yaml`` (embedded DCGAN) as shipped, with each stage cut to a
  couple of steps and one problem;
* ``configs/stylegan2/*.yaml`` with the tiny StyleGAN-2 fixture of
  ``../shared/fixtures`` in place of the FFHQ checkpoint (32x32 images, so the
  box of box inpainting is scaled to 32x32 and super-resolution is 4x, not
  16x), LPIPS with a random backbone (no download) at 32x32, and a small
  Gaussian fit: once on the shipped data, and once on an in-range target
  ``x = G(v*)`` of that generator, which must come back clearly better than
  the stage-0 starting point.

The shipped files are layered with a small override file, as a user would
(``--config shipped.yaml --config override.yaml``); the shipped files are not
edited. Each run writes a new run folder under ``tmp_path``.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import yaml
from PIL import Image

from conftest import TINY
from ilo_pl.cli import ILOCLI
from ilo_pl.data import problem_seed
from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator
from ilo_pl.solutions import load_solution

ROOT = Path(__file__).resolve().parents[1]
DCGAN_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SG2_CONFIGS = sorted((ROOT / "configs" / "stylegan2").glob("*.yaml"))
FFHQ_SIZE, TINY_SIZE = 1024, 32
TINY_NOISES = 7  # the 32x32 fixture's noise inputs (one at 4x4, two per later resolution)
GAUSSIAN_FIT_SAMPLES = 2000  # the fit of the tiny mapping network; 100 000 is slow and not needed here
IN_RANGE_STEPS = 12  # per stage, for the in-range recovery


def _tiny() -> Path:
    if not TINY.is_file():
        pytest.fail(f"missing fixture {TINY}: the shared fixtures must be at ../shared/fixtures (see ../shared/README.md)")
    return TINY


def _shipped(path: Path) -> Dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _stages_with_steps(cfg: Dict[str, Any], steps: int) -> List[Dict[str, Any]]:
    """The shipped stages, each cut to ``steps`` (a list is replaced whole when configs are layered).

    The tiny fixture has the noises ``noise_0``-``noise_6`` only: the FFHQ 1024 configs' later
    noises (``noise_7``...) are left out of ``free``, which names only entries that exist.
    """
    def exists(key: str) -> bool:
        m = re.fullmatch(r"noise_(\d+)", key)
        return m is None or int(m.group(1)) < TINY_NOISES

    return [dict(stage, steps=steps, free=[k for k in stage["free"] if exists(k)]) if "free" in stage
            else dict(stage, steps=steps) for stage in cfg["model"]["stages"]]


def _tiny_stylegan2_overrides(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """What changes when the tiny fixture stands in for the FFHQ 1024 checkpoint."""
    model: Dict[str, Any] = {
        "generator": {
            "class_path": cfg["model"]["generator"]["class_path"],
            "init_args": {"checkpoint": str(_tiny()), "gaussian_fit_samples": GAUSSIAN_FIT_SAMPLES},
        }
    }
    losses = cfg["model"].get("losses") or {}
    if "lpips" in losses:
        # The losses dict is replaced whole when configs are layered: repeat it, LPIPS changed.
        lp = losses["lpips"]
        # Random backbone: offline, no VGG download. 32x32: the fixture's size, and cheap on a CPU.
        init = {**(lp.get("init_args") or {}), "pnet_rand": True, "resize": 32}
        model["losses"] = {**losses, "lpips": {"class_path": lp["class_path"], "init_args": init}}
    op = cfg["data"]["operator"]
    init = dict(op.get("init_args") or {})
    if "box" in init:  # rows/columns of a 1024x1024 face, scaled to the fixture's 32x32
        init["box"] = [int(v * TINY_SIZE // FFHQ_SIZE) for v in init["box"]]
    if "factor" in init:  # 16x of 32x32 would leave a 2x2 observation; 4x keeps it an image (8x8)
        init["factor"] = 4
    return {"model": model, "data": {"operator": {"class_path": op["class_path"], "init_args": init}}}


def _merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _fit(tmp_path: Path, config: Path, override: Dict[str, Any], tag: str) -> Path:
    """``ilo-pl fit --config <shipped> --config <override>``; returns the run folder."""
    out_dir = tmp_path / f"runs_{tag}"
    override = _merge(override, {"output": {"output_dir": str(out_dir)}})
    extra = tmp_path / f"override_{tag}.yaml"
    extra.write_text(yaml.safe_dump(override))
    ILOCLI(args=["fit", "--config", str(config), "--config", str(extra), "--trainer.enable_progress_bar", "false"])
    runs = sorted(out_dir.iterdir())
    assert [r.name for r in runs] == ["run_000"], runs
    return runs[0]


def _check_outputs(run: Path, observation_png: str) -> Dict[str, str]:
    """The run's outputs exist and are sane; returns its one results.csv row.

    ``observation_png``: the observation picture's file-name suffix (see :func:`_observation_png`).
    """
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["failed"] == "", row
    # Classifier guidance has no ground truth: it is judged against its start image.
    no_truth = observation_png == ""
    judged = ("target_prob_start", "target_prob", "start_mse") if no_truth else ("true_mse", "psnr")
    for key in ("measurement_loss",) + judged:
        assert math.isfinite(float(row[key])), (key, row)
    pid = row["id"]
    pngs = ["reconstruction", "grid", "start" if no_truth else "target"] + ([observation_png] if observation_png else [])
    for kind in pngs:
        with Image.open(run / f"{pid}_{kind}.png") as im:
            assert im.size[0] > 0 and im.size[1] > 0, kind
    solution = load_solution(run / f"{pid}_solution.pt")
    assert torch.isfinite(solution["image"]).all()
    assert (run / "config.yaml").is_file()
    return row


def _observation_png(cfg: Dict[str, Any]) -> str:
    """The observation picture's suffix: compressed sensing shows ``A^T y``, classifier guidance none."""
    name = cfg["data"]["operator"]["class_path"].rsplit(".", 1)[-1]
    return {"CompressedSensing": "observation_backprojection", "ClassGuidance": ""}.get(name, "observation")


def test_every_config_is_covered() -> None:
    assert len(DCGAN_CONFIGS) >= 6 and len(SG2_CONFIGS) >= 5


# ----------------------------------------------------------------------------- DCGAN configs
@pytest.mark.parametrize("config", DCGAN_CONFIGS, ids=lambda p: p.stem)
def test_config_runs_end_to_end(config: Path, tmp_path: Path) -> None:
    cfg = _shipped(config)
    override: Dict[str, Any] = {
        "model": {"stages": _stages_with_steps(cfg, 2)},
        "data": {"limit": 1, "batch_size": 1},
    }
    if isinstance(cfg["data"].get("data"), dict):  # problems drawn from the generator: one is enough
        override["data"]["data"] = {"class_path": cfg["data"]["data"]["class_path"], "init_args": {"num": 1}}
    run = _fit(tmp_path, config, override, "smoke")
    _check_outputs(run, _observation_png(cfg))


# ----------------------------------------------------------------------------- StyleGAN-2 configs
@pytest.mark.parametrize("config", SG2_CONFIGS, ids=lambda p: p.stem)
def test_stylegan2_config_runs_end_to_end_with_the_tiny_fixture(config: Path, tmp_path: Path) -> None:
    cfg = _shipped(config)
    override = _merge(
        _tiny_stylegan2_overrides(cfg),
        {"model": {"stages": _stages_with_steps(cfg, 2)}, "data": {"limit": 1, "batch_size": 1}},
    )
    run = _fit(tmp_path, config, override, "smoke")
    row = _check_outputs(run, _observation_png(cfg))
    assert int(row["split"]) in {int(s["split"]) for s in cfg["model"]["stages"]}


def _start_true_mse(cfg: Dict[str, Any], x: torch.Tensor, gen: StyleGAN2Generator) -> float:
    """True MSE of the stage-0 starting point: ``G`` of the problem's seeded initial variables."""
    seed = problem_seed(int(cfg["data"].get("seed", 0)), 0)
    with torch.no_grad():
        start = gen(gen.init_variables(1, torch.Generator().manual_seed(seed))).clamp(-1, 1)
    return float((start - x).pow(2).mean())


@pytest.mark.parametrize("config", SG2_CONFIGS, ids=lambda p: p.stem)
def test_stylegan2_config_recovers_an_in_range_target(config: Path, tmp_path: Path) -> None:
    cfg = _shipped(config)
    override = _merge(
        _tiny_stylegan2_overrides(cfg),
        {
            "model": {"stages": _stages_with_steps(cfg, IN_RANGE_STEPS)},
            # x = G(v*) for a seeded v* of the same generator (GeneratorSamples, split 0: in range).
            "data": {
                "data": {"class_path": "ilo_pl.data.GeneratorSamples", "init_args": {"num": 1, "split": 0}},
                "limit": 1,
                "batch_size": 1,
            },
        },
    )
    run = _fit(tmp_path, config, override, "inrange")
    row = _check_outputs(run, _observation_png(cfg))
    # The ground truth the run used, and the start it began from, with the run's generator settings.
    latent_space = cfg["model"]["generator"]["init_args"].get("latent_space", "w+")
    gen = StyleGAN2Generator(checkpoint=_tiny(), latent_space=latent_space, gaussian_fit_samples=GAUSSIAN_FIT_SAMPLES)
    target = _load_png(run / f"{row['id']}_target.png")
    start = _start_true_mse(cfg, target, gen)
    result = float(row["true_mse"])
    # Measured (12 steps per stage): 0.02-0.05 of the start's true MSE (1.26) under every config.
    assert result < 0.2 * start, (result, start)


def _load_png(path: Path) -> torch.Tensor:
    import numpy as np

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)[None] / 127.5 - 1
