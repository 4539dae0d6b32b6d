"""The quality benchmark's picture grid: one face per task, every method side by side.

    python -m benchmarks.pictures --images ../shared/benchmark/faces/64 --threads 2

One row per task, at the grid point where ILO loses most (the ILO+ tuning
points of :data:`benchmarks.tune.PLUS_LEVELS`: 5% random pixels, the mouth box,
sigma 100, 8x, m/n 5%): the observation (compressed sensing: its
back-projection ``A^T y``), CSGM, ILO, ILO+, the classical baseline and the
truth, each captioned with its true MSE ([-1, 1] scale). The face is the
folder's first image (``--index`` picks another), and its problem is the
quality benchmark's problem for that image (same data module, seed and
schedules: each problem is solved as if alone), so every picture is one of the
benchmark's rows. Tiles are enlarged with nearest-neighbour sampling only.
The picture goes to ``benchmarks/results/quality_faces.png``; an existing
file is kept unless ``--overwrite``.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.pictures`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from benchmarks import quality, tune
from benchmarks.baselines import baseline_name, classical_baseline
from benchmarks.common import RESULTS, ROOT, quiet_run_setup
from benchmarks.report import LABELS, level_text
from ilo_pl.callbacks.writer import observation_pictures
from ilo_pl.demo.strip import labelled_strip
from ilo_pl.io import to_uint8
from ilo_pl.metrics import image_metrics

log = logging.getLogger("pictures")

#: The columns of the grid (methods of :mod:`benchmarks.quality`).
COLUMNS = ("observation", "csgm", "ilo", "ilo_plus", "classical", "truth")


def task_row(task: str, images: Path, index: int, generator, config_dir: Path = ROOT / "configs",
             steps_scale: float = 1.0, tile: int = 128) -> np.ndarray:
    """The captioned strip of one task: observation, CSGM, ILO, ILO+, classical baseline, truth."""
    cfg = quality.load_task_config(task, config_dir)
    plus = quality.load_task_config(task, config_dir, plus=True)
    level = tune.PLUS_LEVELS[task] if tune.PLUS_LEVELS[task] is not None else cfg.config_level
    one = quality.make_problems(cfg, level, images, generator, 0, None, indices=[index])
    plans = quality.method_plans(cfg, steps_scale)
    plans.update(quality.plus_plans(plus, steps_scale, sum(s.steps for s in plans["csgm"][0])))
    outputs = {}
    for method in ("csgm", "ilo", "ilo_plus"):
        stages, kwargs = plans[method]
        trainer = (plus if method == "ilo_plus" else cfg).trainer_kwargs
        outputs[method], secs = quality.solve_batch(generator, one, stages, kwargs, trainer)
        log.info("%s %s: %.1fs", task, method, secs)
    outputs["classical"] = classical_baseline(task, one.operator, one.observation, level,
                                              tuple(generator.image_shape))
    target = one.target.float().cpu()
    pics, name = observation_pictures(one.operator, one.observation, target)
    lvl = "mouth box" if task == "inpainting_box" else level_text(task, quality.level_label(task, level))
    obs_caption = f"{lvl}: " + ("A^T y" if name.endswith("backprojection") else "y")
    items: List[Tuple[np.ndarray, str]] = [(to_uint8(pics[0]), obs_caption)]
    for method in ("csgm", "ilo", "ilo_plus", "classical"):
        img = outputs[method].float().cpu()
        mse = float(image_metrics(img, target)["true_mse"][0])
        label = LABELS[baseline_name(task)] if method == "classical" else LABELS[method]
        items.append((to_uint8(img[0]), f"{label} {mse:.4f}"))
    items.append((to_uint8(target[0]), f"truth ({one.ids[0]})"))
    return labelled_strip(items, tile=tile)


def picture_grid(images: Path, out: Path, tasks: Sequence[str], index: int = 0, config_dir: Path = ROOT / "configs",
                 steps_scale: float = 1.0, overwrite: bool = False, generator=None) -> Path:
    """Write the grid (one strip per task, stacked) to ``out``; returns ``out``.

    Raises:
        FileExistsError: if ``out`` exists and not ``overwrite`` (earlier results are kept).
        FileNotFoundError: if the image folder is missing.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it, or --out elsewhere")
    if not Path(images).is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist; pass --images DIR")
    if generator is None:
        generator = quality.build_generator("dcgan")
    strips = [task_row(t, Path(images), index, generator, config_dir, steps_scale) for t in tasks]
    width = max(s.shape[1] for s in strips)
    sheet = np.full((sum(s.shape[0] for s in strips), width, 3), 255, dtype=np.uint8)
    y = 0
    for s in strips:
        sheet[y:y + s.shape[0], :s.shape[1]] = s
        y += s.shape[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="evaluation images (../shared/benchmark/faces/64)")
    p.add_argument("--index", type=int, default=0, help="which image of the folder (sorted; default the first)")
    p.add_argument("--tasks", nargs="+", default=["all"], help="tasks (as quality.py's --tasks)")
    p.add_argument("--out", type=Path, default=RESULTS / "quality_faces.png")
    p.add_argument("--configs", type=Path, default=ROOT / "configs")
    p.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's steps (smoke runs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing picture")
    p.add_argument("--threads", type=int, default=None)
    ns = p.parse_args(argv)
    quiet_run_setup(ns.threads)
    torch.manual_seed(0)
    path = picture_grid(ns.images, ns.out, quality.expand_tasks(ns.tasks), ns.index, ns.configs, ns.steps_scale,
                        ns.overwrite)
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
