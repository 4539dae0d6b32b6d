"""What each task writes (issue 19, "the first hour"): classifier guidance is judged against its
start image (no fake ground truth), compressed sensing shows its back-projection ``A^T y``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ilo_pl.callbacks.writer import observation_pictures
from ilo_pl.cli import ILOCLI
from ilo_pl.data import problem_seed
from ilo_pl.io import to_uint8
from ilo_pl.modules.variables import initial_state
from ilo_pl.operators import BoxMask
from ilo_pl.operators.cs import PartialCirculant
from ilo_pl.operators.superres import BicubicDownsample
from ilo_pl.resume import CSV_FIELDS
from ilo_pl.solutions import load_generator, load_solution

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]


def _fit_shipped(tmp_path: Path, task: str, steps: int = 2) -> Path:
    """The shipped ``configs/<task>.yaml`` with ``steps`` per stage and one problem; returns its run folder."""
    cfg = yaml.safe_load((ROOT / "configs" / f"{task}.yaml").read_text())
    for st in cfg["model"]["stages"]:
        st["steps"] = steps
    if isinstance(cfg["data"].get("data"), dict):
        cfg["data"]["data"]["init_args"]["num"] = 1
    cfg["data"].update(limit=1, batch_size=1)
    cfg["output"] = {"run_dir": str(tmp_path / "run")}
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ILOCLI(args=["fit", "--config", str(path), "--trainer.enable_progress_bar", "false"])
    return tmp_path / "run"


def _cli(tmp_path: Path, task: str) -> ILOCLI:
    """The run's config, parsed (not run)."""
    return ILOCLI(args=["--config", str(tmp_path / f"{task}.yaml")], run=False)


def _rows(run: Path) -> List[Dict[str, str]]:
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# -- classifier guidance -----------------------------------------------------------------------
def test_classifier_guidance_reports_target_probability_and_distance_to_its_start(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    run = _fit_shipped(tmp_path, "classifier_guidance")
    (row,) = _rows(run)
    pid = row["id"]
    # No fake ground truth: the data's image is not what the result should look like.
    assert not (run / f"{pid}_target.png").exists()
    assert row["true_mse"] == row["psnr"] == row["ssim"] == ""
    # The start image and the result, side by side: start | result.
    start_png, rec_png, grid = (_png(run / f"{pid}_{k}.png") for k in ("start", "reconstruction", "grid"))
    assert grid.shape == (64, 128, 3)
    assert np.array_equal(grid[:, :64], start_png) and np.array_equal(grid[:, 64:], rec_png)

    # The start is stage 0's initial variables (the problem's seed), rendered.
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    gen = load_generator(run / "config.yaml")
    state = initial_state(gen, [problem_seed(cfg["data"]["seed"], int(row["index"]))], 0, False, torch.device("cpu"))
    with torch.no_grad():
        start = gen.render(state, 0)
    assert np.array_equal(start_png, to_uint8(start[0]))

    # The numbers: p(target) before and after, and the distance to the start.
    cli = _cli(tmp_path, "classifier_guidance")
    op = cli.datamodule.operator_spec.build(gen.image_shape, 0)
    target = cli.datamodule.operator_spec.target
    final = load_solution(run / f"{pid}_solution.pt")["image"]
    with torch.no_grad():
        p_start = float(op.probabilities(start)[0, target])
        p_final = float(op.probabilities(final)[0, target])
    assert float(row["target_prob_start"]) == pytest.approx(p_start, rel=1e-4)
    assert float(row["target_prob"]) == pytest.approx(p_final, rel=1e-4)
    assert float(row["target_prob"]) == pytest.approx(math.exp(-float(row["measurement_loss"])), rel=1e-4)
    assert float(row["target_prob"]) > float(row["target_prob_start"])  # guidance did something
    dist = (final.clamp(-1, 1) - start.clamp(-1, 1)).pow(2).mean()
    assert float(row["start_mse"]) == pytest.approx(float(dist), rel=1e-4, abs=1e-7)


def test_csv_columns_keep_their_places_and_add_the_start_columns():
    assert CSV_FIELDS[:9] == ["index", "id", "measurement_loss", "true_mse", "psnr", "ssim", "best_stage", "split", "failed"]
    assert CSV_FIELDS[9:12] == ["target_prob_start", "target_prob", "start_mse"]


# -- compressed sensing ------------------------------------------------------------------------
def test_compressed_sensing_shows_its_backprojection_as_observation(tmp_path):
    run = _fit_shipped(tmp_path, "compressed_sensing")
    (row,) = _rows(run)
    pid = row["id"]
    assert row["target_prob_start"] == row["target_prob"] == row["start_mse"] == ""  # not this task's columns
    back_png = _png(run / f"{pid}_observation_backprojection.png")
    grid = _png(run / f"{pid}_grid.png")
    # The same three panels as the image tasks: observation (here A^T y) | reconstruction | ground truth.
    assert grid.shape == (64, 192, 3)
    assert np.array_equal(grid[:, :64], back_png)
    assert np.array_equal(grid[:, 64:128], _png(run / f"{pid}_reconstruction.png"))
    assert np.array_equal(grid[:, 128:], _png(run / f"{pid}_target.png"))
    # ... and it is A^T y of the problem's observation.
    cli = _cli(tmp_path, "compressed_sensing")
    dm = cli.datamodule
    dm.bind(load_generator(run / "config.yaml"))
    batch = dm.make_batch([int(row["index"])])
    with torch.no_grad():
        expect = batch.operator.A_adjoint(batch.observation)[0]
    assert np.array_equal(back_png, to_uint8(expect))


def test_observation_pictures_per_kind_of_observation():
    images = torch.zeros(2, 3, 8, 8)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    # an image observation: itself
    op = BoxMask(box=(2, 4, 2, 4)).build((3, 8, 8), 0)
    pics, name = observation_pictures(op, op(x), images)
    assert name == "observation" and torch.equal(pics, op(x))
    # a low-resolution image: upscaled (nearest) to the images' size
    sr = BicubicDownsample(2)
    pics, name = observation_pictures(sr, sr(x), images)
    assert name == "observation" and pics.shape == (2, 3, 8, 8)
    # measurement vectors of a linear operator: A^T y
    cs = PartialCirculant((3, 8, 8), m=19, seed=0)
    y = cs(x)
    pics, name = observation_pictures(cs, y, images)
    assert name == "observation_backprojection" and torch.allclose(pics, cs.A_adjoint(y))
    # class labels: no picture
    from ilo_pl.operators.base import LambdaOperator

    labels = LambdaOperator(lambda t: t.flatten(1)[:, :3])
    assert observation_pictures(labels, torch.zeros(2, dtype=torch.long), images) == (None, "")
