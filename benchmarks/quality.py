#!/usr/bin/env python
"""Quality benchmark: ILO vs CSGM, PULSE-style and classical baselines on a folder of images.

Usage (from the repository root)::

    python benchmarks/quality.py --images ../shared/benchmark/faces/64            # full grid
    python benchmarks/quality.py --images ../shared/benchmark/faces/64 --quick    # < 10 min
    python benchmarks/quality.py --images ... --tasks inpainting denoising        # one part
    python benchmarks/quality.py --out benchmarks/results --report-only           # plots/table only

For every task and grid point (measurement level) all images are solved as
ONE batch (the engine solves each sample as if alone) by every method:

* ``csgm``: the config's first stage alone, for the schedule's total steps;
* ``pulse``: the same, with the latent kept on its sphere (``sphere=True``);
* ``ilo``: the config's full stage schedule (the primary result);
* ``ilo_r0.5``, ``ilo_r2``: the schedule with all radii scaled by 0.5 / 2
  (sweep); with ``ilo`` they form the secondary ``ilo_best3`` result, the best
  of the three per image chosen by the *measurement* loss (never the true error);
* the classical baseline of the task (see ``benchmarks/baselines.py``).

Each ``configs/<task>.yaml`` is read by the command line's own parser
(``ilo_pl.config.build_from_config``): the solves get every module option of
the config (stages, ``sna``, ``sphere``, ``selection``, ``loss_weights``, ...,
and the defaults of those it leaves out), and each grid point's problems come
from the config's data module with the image folder, seed and grid argument
set, so the configs in the README are what is benchmarked. Problems (images,
masks, matrices, noise, initial latents) are those ``ilo-pl fit --data.seed
SEED`` makes (``ilo_pl.data.problem_seed``).

Every (image, grid point, method) is a row of ``<out>/quality.csv``
(``quality_quick.csv`` with ``--quick``), tagged with the config's file name
and fingerprint; rows already there are not recomputed, so a killed run, or a
grid run in parts (``--tasks``), resumes. A task whose config changed since its
rows were written is refused (the earlier rows are never overwritten or mixed
in): move the CSV away or pass ``--csv``.
The report (``<csv stem>.png``, ``<csv stem>_table.md``) is rebuilt from the
whole CSV after each run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import logging
import math
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
if str(_HERE) not in sys.path:  # run as a script: make the sibling module importable
    sys.path.insert(0, str(_HERE))
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from baselines import baseline_name, classical_baseline  # noqa: E402

from ilo_pl.config import build_from_config  # noqa: E402
from ilo_pl.metrics import image_metrics  # noqa: E402
from ilo_pl.modules.generators.base import SplitGenerator  # noqa: E402
from ilo_pl.operators import Inpainting  # noqa: E402
from ilo_pl.problem import ProblemBatch  # noqa: E402
from ilo_pl.stages import Stage  # noqa: E402

log = logging.getLogger("quality")

# ----------------------------------------------------------------------------- the grid
#: Task name -> (config file, the operator argument the grid varies).
TASKS: Dict[str, Tuple[str, str]] = {
    "inpainting_random": ("inpainting_random.yaml", "fraction"),
    "inpainting_box": ("inpainting_box.yaml", "box"),
    "denoising": ("denoising.yaml", "sigma"),
    "superres": ("superres.yaml", "factor"),
    "compressed_sensing": ("compressed_sensing.yaml", "ratio"),
}
#: Names ``--tasks`` accepts for groups of tasks.
ALIASES = {
    "inpainting": ["inpainting_random", "inpainting_box"],
    "cs": ["compressed_sensing"],
    "sr": ["superres"],
    "all": list(TASKS),
}
#: The grid of each task (the box task has one point: the config's box).
GRID = {
    "inpainting_random": [0.01, 0.05, 0.10, 0.20, 0.50, 1.0],
    "denoising": [5.0, 25.0, 50.0, 100.0, 256.0],
    "superres": [2, 4, 8],
    "compressed_sensing": [0.01, 0.05, 0.10, 0.25, 0.50],
}
#: Super-resolution factors for 1024x1024 images.
SR_GRID_1024 = [4, 8, 16, 32]
#: Radius scales of the best-of-N sweep (1.0 is the primary ``ilo`` run).
RADIUS_SCALES = (0.5, 1.0, 2.0)
#: All methods, in table order.
METHODS = ("csgm", "pulse", "ilo", "classical", "ilo_best3")
#: Steps scale, images and methods of ``--quick``.
QUICK_STEPS_SCALE, QUICK_LIMIT = 0.25, 2
QUICK_METHODS = ("csgm", "pulse", "ilo", "classical")

COLUMNS = [
    "run", "task", "level", "method", "protocol", "image", "seed", "steps",
    "true_mse", "psnr", "ssim", "lpips", "true_mse_pasted", "psnr_pasted", "ssim_pasted",
    "measurement_loss", "selected", "seconds", "generator", "config",
]


def expand_tasks(names: Iterable[str]) -> List[str]:
    """Resolve task names and aliases (``inpainting``, ``cs``, ``sr``, ``all``) in grid order.

    Raises:
        ValueError: naming an unknown task and the valid names.
    """
    out: List[str] = []
    for name in names:
        for task in ALIASES.get(name, [name]):
            if task not in TASKS:
                valid = ", ".join(list(TASKS) + list(ALIASES))
                raise ValueError(f"unknown task {name!r}; choose from {valid}")
            if task not in out:
                out.append(task)
    return [t for t in TASKS if t in out]


def grid_levels(task: str, config_level: Any, image_size: int) -> List[Any]:
    """The grid points of ``task`` for square images of side ``image_size``."""
    if task == "inpainting_box":
        return [list(config_level)]
    if task == "superres":
        levels = SR_GRID_1024 if image_size >= 1024 else GRID["superres"]
        return [f for f in levels if image_size % f == 0]
    return list(GRID[task])


def level_label(task: str, level: Any) -> str:
    """The grid point as written in the CSV (``box[38,55,14,49]``, ``0.1``, ``50``, ``4``)."""
    if task == "inpainting_box":
        return "box[" + ",".join(str(int(v)) for v in level) + "]"
    return f"{float(level):g}"


# ---------------------------------------------------------------------------- configs
@dataclass
class TaskConfig:
    """What the benchmark takes from ``configs/<task>.yaml``, read by the CLI's own parser.

    Attributes:
        path: the config file.
        stages: its stage schedule.
        module_kwargs: every other ``ILOModule`` argument as the config resolves it
            (``ilo_pl.config.build_from_config``; options the config leaves out at
            their defaults), minus ``generator`` (the benchmark brings its own).
        operator_class: ``data.operator.class_path``.
        operator_args: ``data.operator.init_args``, resolved.
        level_key: the operator argument the grid varies.
        fingerprint: a hash of the resolved config without what the benchmark sets
            itself (image folder, limit, batch size, the grid's argument, ``log_every``);
            rows made with another fingerprint are not this config's.
        trainer_kwargs: ``trainer`` entries the config sets (e.g. ``precision``).
    """

    path: Path
    stages: List[Stage]
    module_kwargs: Dict[str, Any]
    operator_class: str
    operator_args: Dict[str, Any]
    level_key: str
    fingerprint: str = ""
    trainer_kwargs: Dict[str, Any] = field(default_factory=dict)

    @property
    def config_level(self) -> Any:
        """The grid point the config itself solves."""
        return self.operator_args.get(self.level_key)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def label(self) -> str:
        """``<file>@<fingerprint>``: the CSV's ``config`` column."""
        return f"{self.path.name}@{self.fingerprint}"


#: Resolved config entries the benchmark sets itself, left out of a config's fingerprint.
_FINGERPRINT_EXCLUDE = ("data.data", "data.limit", "data.batch_size", "model.log_every")


def load_task_config(task: str, config_dir: Path) -> TaskConfig:
    """Read ``configs/<task>.yaml`` through the command line's parser (``build_from_config``).

    Every module option of the config reaches the benchmark's solves: nothing
    is picked by name, so an option the benchmark does not know is not dropped.

    Raises:
        FileNotFoundError: if the config is missing.
        ValueError: if the parser rejects it, or it weighs a loss other than MSE.
    """
    name, level_key = TASKS[task]
    path = Path(config_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"config {path} of task {task!r} does not exist; pass --configs DIR")
    built = build_from_config([path])
    kwargs = {k: v for k, v in built.module_kwargs.items() if k not in ("generator", "stages")}
    stages = list(built.module.stages)
    if not stages:
        raise ValueError(f"{path} has no model.stages; the benchmark runs the config's stage schedule")
    weights = dict(kwargs.get("loss_weights") or {"mse": 1.0})
    other = sorted(k for k, w in weights.items() if k != "mse" and w)
    if other or any(set(k for k, w in (s.loss_weights or {}).items() if w) - {"mse"} for s in stages):
        raise ValueError(
            f"{path} weighs loss terms {other or 'per stage'} besides mse; the quality benchmark "
            "compares MSE-only solvers: remove them from the config or extend the benchmark"
        )
    op = (built.config.get("data") or {}).get("operator") or {}
    if not isinstance(op, dict) or "class_path" not in op:
        raise ValueError(f"{path} has no data.operator.class_path")
    exclude = _FINGERPRINT_EXCLUDE + (f"data.operator.init_args.{level_key}",)
    if level_key == "ratio":
        exclude += ("data.operator.init_args.m",)
    return TaskConfig(path, stages, kwargs, op["class_path"], dict(op.get("init_args") or {}), level_key,
                      built.fingerprint(exclude=exclude), dict(built.trainer_kwargs))


def _level_value_for(cfg: TaskConfig, level: Any) -> Any:
    if cfg.level_key == "factor" and float(level) == int(level):
        return int(level)  # --levels gives floats; factors are integers
    if cfg.level_key == "box":
        return [int(v) for v in level]
    return level


def data_overrides(cfg: TaskConfig, level: Any, images: Path, seed: int, limit: Optional[int]) -> Dict[str, Any]:
    """The ``data`` overrides of one grid point: image folder, seed, limit and the grid's argument."""
    init_args: Dict[str, Any] = {cfg.level_key: _level_value_for(cfg, level)}
    if cfg.level_key == "ratio":
        init_args["m"] = None
    return {"data": {"data": str(images), "seed": int(seed), "limit": limit,
                     "operator": {"class_path": cfg.operator_class, "init_args": init_args}}}


def scaled_stages(stages: Sequence[Stage], steps_scale: float = 1.0, radius_scale: float = 1.0) -> List[Stage]:
    """A copy of ``stages`` with steps and finite radii scaled (every other field kept, e.g. ``sna``)."""
    return [
        dataclasses.replace(
            s,
            steps=max(1, int(round(s.steps * steps_scale))),
            free=list(s.free),
            radius={k: (r * radius_scale if math.isfinite(r) else r) for k, r in s.radius.items()},
            loss_weights=None if s.loss_weights is None else dict(s.loss_weights),
        )
        for s in stages
    ]


def method_plans(cfg: TaskConfig, steps_scale: float) -> Dict[str, Tuple[List[Stage], Dict[str, Any]]]:
    """``method -> (stages, ILOModule kwargs)`` for the generator methods of one task."""
    ilo = scaled_stages(cfg.stages, steps_scale)
    total = sum(s.steps for s in ilo)
    first = ilo[0]
    base = {k: v for k, v in cfg.module_kwargs.items() if k != "sphere"}
    # CSGM and PULSE: the first stage alone for the whole budget, with the module's
    # options (so with SNA where the config turns it on: the paper's "CSGM + SNA").
    single = [Stage(split=first.split, steps=total, lr=first.lr, free=list(first.free), radius=dict(first.radius))]
    plans = {
        "csgm": (single, {**base, "sphere": False}),
        "pulse": (single, {**base, "sphere": True}),
        "ilo": (ilo, dict(cfg.module_kwargs)),
    }
    for r in RADIUS_SCALES:
        if r != 1.0:
            plans[f"ilo_r{r:g}"] = (scaled_stages(cfg.stages, steps_scale, r), dict(cfg.module_kwargs))
    return plans


# -------------------------------------------------------------------------- generator
def build_generator(name: str = "dcgan", weights: Optional[str] = None, kwargs: Optional[Mapping[str, Any]] = None) -> SplitGenerator:
    """``dcgan`` (the embedded DCGAN) or a ``module.Class`` SplitGenerator path."""
    if name == "dcgan":
        from ilo_pl.modules.generators import DCGANGenerator

        return DCGANGenerator(weights=weights)
    module, _, cls = name.rpartition(".")
    if not module:
        raise ValueError(f"--generator must be 'dcgan' or a 'module.Class' path; got {name!r}")
    gen_cls = getattr(importlib.import_module(module), cls)
    args = dict(kwargs or {})
    if weights is not None:
        args["weights"] = weights
    return gen_cls(**args)


def ensure_latent_sphere(generator: SplitGenerator) -> bool:
    """Give the generator a sphere for its split-0 latents if it declares none.

    PULSE-style solves keep the input latent on the sphere of radius
    ``sqrt(dim)``. Generators that declare no sphere variable at split 0
    (``sphere_variables(0) == {}``) get, on this instance only, every
    ``latent`` entry of split 0 over all its non-batch dims.

    Returns:
        ``True`` if the sphere was added here, ``False`` if the generator has its own.
    """
    if generator.sphere_variables(0):
        return False
    probe = generator.init_variables(1)
    groups = generator.groups(0)
    spheres = {k: tuple(range(1, v.dim())) for k, v in probe.items() if groups.get(k) == "latent"}
    if not spheres:
        raise ValueError(f"{type(generator).__name__} has no latent entry at split 0 to put on a sphere")
    original = generator.sphere_variables

    def sphere_variables(self: SplitGenerator, split: int) -> Dict[str, Tuple[int, ...]]:
        return dict(spheres) if split == 0 else original(split)

    # An instance attribute, so the class (and other instances) are untouched.
    object.__setattr__(generator, "sphere_variables", types.MethodType(sphere_variables, generator))
    return True


# ---------------------------------------------------------------------------- metrics
class LPIPSMetric:
    """LPIPS (AlexNet, the metric's usual backbone) when its ImageNet weights are on disk.

    Never downloads: :attr:`available` is ``False`` (and the CSV column stays
    empty) when the backbone is not in the torch hub cache.
    """

    def __init__(self, net: str = "alex") -> None:
        self.net = None
        try:
            from ilo_pl.losses.lpips import LPIPSLoss, backbone_weights_path

            path = backbone_weights_path(net)
        except Exception as err:  # noqa: BLE001 - any import problem means "no LPIPS"
            self.reason = f"LPIPS unavailable ({type(err).__name__}: {err})"
            return
        if not path.is_file():
            self.reason = f"LPIPS column empty: the {net} backbone weights are not at {path}"
            return
        self.net = LPIPSLoss(net=net, resize=None)
        self.reason = f"LPIPS ({net}) from {path}"

    @property
    def available(self) -> bool:
        return self.net is not None

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor) -> Optional[Tensor]:
        if self.net is None:
            return None
        return self.net.distance(pred.float(), target.float()).cpu()


def evaluate(
    images: Tensor, batch: ProblemBatch, lpips_metric: Optional[LPIPSMetric] = None
) -> Dict[str, Optional[Tensor]]:
    """Per-image metrics of ``images`` against the never-observed ground truth.

    ``true_mse`` is on the ``[-1, 1]`` scale (the paper's metric); PSNR/SSIM on
    ``[0, 1]``. For inpainting the ``*_pasted`` metrics are those of the output
    with the observed pixels pasted back (``operator.superimpose``).
    """
    target = batch.target.float().cpu()
    images = images.float().cpu()
    op = batch.operator.cpu()
    y = batch.observation.cpu()
    out: Dict[str, Optional[Tensor]] = dict(image_metrics(images, target))
    out["lpips"] = lpips_metric(images, target) if lpips_metric is not None else None
    with torch.no_grad():
        out["measurement_loss"] = op.measurement_error(op.A(images), y).float()
    if isinstance(op, Inpainting):
        pasted = op.superimpose(images, y)
        pm = image_metrics(pasted, target)
        out.update(true_mse_pasted=pm["true_mse"], psnr_pasted=pm["psnr"], ssim_pasted=pm["ssim"])
    return out


# ----------------------------------------------------------------------------- running
def make_problems(cfg: TaskConfig, level: Any, images: Path, generator: SplitGenerator, seed: int,
                  limit: Optional[int]) -> ProblemBatch:
    """All problems of one grid point as one batch, made by the config's data module.

    The data module is built from the config through the command line's parser
    (with the grid point's overrides), so every ``data`` option (``resize``,
    the operator's other arguments, ...) applies as in ``ilo-pl fit``.
    """
    dm = build_from_config([cfg.path], data_overrides(cfg, level, images, seed, limit)).datamodule
    dm.bind(generator)
    return dm.make_batch(dm.problem_indices())


def solve_batch(
    generator: SplitGenerator, batch: ProblemBatch, stages: List[Stage], module_kwargs: Mapping[str, Any],
    trainer_kwargs: Optional[Mapping[str, Any]] = None,
) -> Tuple[Tensor, float]:
    """Solve the batch with one schedule: ``(images [B, C, H, W], wall seconds)``."""
    from ilo_pl.api import solve

    t0 = time.perf_counter()
    result = solve(
        generator, batch.operator, batch.observation, stages,
        target=batch.target, seeds=batch.seeds, ids=batch.ids,
        trainer_kwargs=dict(trainer_kwargs or {}), **dict(module_kwargs),
    )
    return result.images, time.perf_counter() - t0


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def read_rows(path: Path) -> List[Dict[str, str]]:
    """The rows of a results CSV (``[]`` if it does not exist)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class CsvLog:
    """Append-only CSV of result rows; knows which (run, task, level, method, image, config) are done.

    Rows are never rewritten. A config that changed since its rows were made
    (another fingerprint in the ``config`` column) is refused rather than mixed
    in or silently re-run over the earlier rows.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_rows(self.path)
        if rows and list(rows[0].keys()) != COLUMNS:
            raise ValueError(
                f"{self.path} has other columns than this benchmark writes; move it away or pass another --out"
            )
        self.done = {(r["run"], r["task"], r["level"], r["method"], r["image"], r["config"]) for r in rows}
        self.configs: Dict[Tuple[str, str], set] = {}
        for r in rows:
            self.configs.setdefault((r["run"], r["task"]), set()).add(r["config"])

    def check_config(self, run: str, task: str, config: str) -> None:
        """Refuse to add rows of ``task`` made with ``config`` beside rows of another config.

        Raises:
            ValueError: naming the configs and how to keep the earlier rows.
        """
        other = sorted(self.configs.get((run, task), set()) - {config})
        if other:
            raise ValueError(
                f"{self.path} holds {task} rows made with another config ({', '.join(other)}; now {config}): "
                f"the config (or the steps scale) changed since. Its earlier rows are kept: move {self.path.name} "
                "away (e.g. to benchmarks/results/archive/) or pass --csv NAME for a new table"
            )

    def has(self, run: str, task: str, level: str, method: str, images: Sequence[str], config: str) -> bool:
        return all((run, task, level, method, i, config) in self.done for i in images)

    def write(self, rows: List[Dict[str, Any]]) -> None:
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
                self.done.add((r["run"], r["task"], r["level"], r["method"], r["image"], r["config"]))
                self.configs.setdefault((r["run"], r["task"]), set()).add(r["config"])


def metric_rows(
    common: Mapping[str, Any], batch: ProblemBatch, metrics: Mapping[str, Optional[Tensor]], seconds: float
) -> List[Dict[str, Any]]:
    """One CSV row per image of the batch."""
    rows = []
    for b, name in enumerate(batch.ids):
        row = dict(common, image=name, seed=batch.seeds[b], seconds=seconds)
        for key, val in metrics.items():
            row[key] = None if val is None else float(val[b])
        rows.append(row)
    return rows


def best_of_rows(rows: List[Dict[str, Any]], methods: Sequence[str], name: str) -> List[Dict[str, Any]]:
    """Per image, the row of ``methods`` with the lowest measurement loss, renamed ``name``.

    The selection never looks at the ground truth.
    """
    by_image: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if r["method"] in methods:
            by_image.setdefault(r["image"], []).append(r)
    out = []
    for image, cands in by_image.items():
        if {c["method"] for c in cands} != set(methods):
            continue
        best = min(cands, key=lambda c: float(c["measurement_loss"]))
        out.append(dict(best, method=name, protocol="secondary", selected=best["method"],
                        seconds=sum(float(c["seconds"]) for c in cands)))
    return out


@dataclass
class BenchmarkSettings:
    """Options of one benchmark invocation (see ``--help``)."""

    images: Path
    out: Path
    tasks: List[str]
    methods: Tuple[str, ...] = METHODS
    config_dir: Path = _ROOT / "configs"
    seed: int = 0
    limit: Optional[int] = None
    steps_scale: float = 1.0
    levels: Optional[List[float]] = None
    quick: bool = False
    csv_name: Optional[str] = None

    @property
    def run(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def csv_path(self) -> Path:
        return self.out / (self.csv_name or ("quality_quick.csv" if self.quick else "quality.csv"))


def run_benchmark(settings: BenchmarkSettings, generator: SplitGenerator, gen_name: str = "dcgan") -> Path:
    """Run every (task, grid point, method) not yet in the CSV; returns the CSV path.

    Raises:
        FileNotFoundError: if the image folder or a config is missing.
        ValueError: for an unknown method.
    """
    images = Path(settings.images)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist; pass --images DIR")
    unknown = sorted(set(settings.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    # PULSE (and configs with sphere: true) need the latent's sphere; see ensure_latent_sphere.
    if ensure_latent_sphere(generator):
        log.warning("%s declares no sphere at split 0: its split-0 latents get one here, used by "
                    "PULSE and by configs with sphere: true", type(generator).__name__)
    lpips_metric = LPIPSMetric()
    log.info("%s", lpips_metric.reason)
    store = CsvLog(settings.csv_path)
    size = int(generator.image_shape[-1])
    for task in settings.tasks:
        cfg = load_task_config(task, settings.config_dir)
        plans = method_plans(cfg, settings.steps_scale)
        config_label = (cfg.label + (f"x{settings.steps_scale:g}" if settings.steps_scale != 1.0 else "")
                        + (f"s{settings.seed}" if settings.seed != 0 else ""))
        store.check_config(settings.run, task, config_label)
        if settings.quick:
            levels = [cfg.config_level]
        elif settings.levels is not None and task != "inpainting_box":
            levels = list(settings.levels)
        else:
            levels = grid_levels(task, cfg.config_level, size)
        wanted = [m for m in settings.methods if m != "ilo_best3"]
        if "ilo_best3" in settings.methods:
            wanted += [m for m in ("ilo", *[f"ilo_r{r:g}" for r in RADIUS_SCALES if r != 1.0]) if m not in wanted]
        for level in levels:
            label = level_label(task, level)
            batch = make_problems(cfg, level, images, generator, settings.seed, settings.limit)
            common = dict(run=settings.run, task=task, level=label, generator=gen_name, config=config_label)
            point_rows: List[Dict[str, Any]] = []
            for method in wanted:
                stored = baseline_name(task) if method == "classical" else method
                if store.has(settings.run, task, label, stored, batch.ids, config_label):
                    continue
                if method == "classical":
                    t0 = time.perf_counter()
                    out = classical_baseline(task, batch.operator, batch.observation, level, tuple(generator.image_shape))
                    secs = time.perf_counter() - t0
                    row = dict(common, method=baseline_name(task), protocol="baseline", steps=None)
                else:
                    stages, kwargs = plans[method]
                    out, secs = solve_batch(generator, batch, stages, kwargs, cfg.trainer_kwargs)
                    protocol = "primary" if method in ("csgm", "pulse", "ilo") else "sweep"
                    row = dict(common, method=method, protocol=protocol, steps=sum(s.steps for s in stages))
                rows = metric_rows(row, batch, evaluate(out, batch, lpips_metric), secs)
                store.write(rows)
                point_rows += rows
                log.info("%s %s %-10s %6.1fs  true MSE %.4f", task, label, row["method"], secs,
                         sum(float(r["true_mse"]) for r in rows) / len(rows))
            if "ilo_best3" in settings.methods and not store.has(settings.run, task, label, "ilo_best3", batch.ids,
                                                                 config_label):
                sweep = ["ilo"] + [f"ilo_r{r:g}" for r in RADIUS_SCALES if r != 1.0]
                have = [r for r in read_rows(store.path)
                        if r["run"] == settings.run and r["task"] == task and r["level"] == label
                        and r["config"] == config_label]
                store.write(best_of_rows(have, sweep, "ilo_best3"))
    return store.path


# ----------------------------------------------------------------------------- report
#: Display names and styles of the methods in plots and tables.
LABELS = {
    "csgm": "CSGM", "pulse": "PULSE-style", "ilo": "ILO", "ilo_best3": "ILO best-of-3 (secondary)",
    "biharmonic": "biharmonic", "bm3d": "BM3D", "bicubic": "bicubic", "tv_lsq": "TV least squares",
}
_STYLE = {
    "csgm": dict(color="tab:blue", marker="o"),
    "pulse": dict(color="tab:orange", marker="s"),
    "ilo": dict(color="tab:red", marker="^"),
    "ilo_best3": dict(color="tab:red", marker="v", linestyle="--", alpha=0.6),
    "classical": dict(color="tab:green", marker="D"),
}
TITLES = {
    "inpainting_random": "Inpainting, random mask",
    "inpainting_box": "Inpainting, box mask (mouth)",
    "denoising": "Denoising",
    "superres": "Super-resolution",
    "compressed_sensing": "Compressed sensing (partial circulant)",
}
XLABELS = {
    "inpainting_random": "observed pixels (%)",
    "denoising": "noise sigma (0..255 scale)",
    "superres": "downsampling factor",
    "compressed_sensing": "measurements m/n (%)",
}


def _level_value(task: str, label: str) -> float:
    if task == "inpainting_box":
        return 0.0
    v = float(label)
    return 100 * v if task in ("inpainting_random", "compressed_sensing") else v


def _stats(values: List[float]) -> Dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "sem": std / math.sqrt(n)}


def summarize(rows: List[Dict[str, str]], metric: str = "true_mse") -> Dict[Tuple[str, str, str], Dict[str, float]]:
    """``(task, level, method) -> {n, mean, std, sem}`` of ``metric`` over images.

    Classical baselines appear under the method ``classical`` (their own name
    is in ``baselines.BASELINE_NAMES``).
    """
    groups: Dict[Tuple[str, str, str], List[float]] = {}
    for r in rows:
        if r.get(metric, "") in ("", None):
            continue
        method = "classical" if r["protocol"] == "baseline" else r["method"]
        groups.setdefault((r["task"], r["level"], method), []).append(float(r[metric]))
    return {k: _stats(v) for k, v in groups.items()}


def _baseline_of(task: str) -> str:
    return LABELS[baseline_name(task)]


def required_point(task: str, label: str) -> bool:
    """Whether the issue's ILO <= 0.5 x CSGM target applies to this grid point."""
    if task == "inpainting_box":
        return True
    v = float(label)
    return {
        "inpainting_random": v >= 0.05, "compressed_sensing": v >= 0.05,
        "denoising": v <= 100, "superres": v <= 8,
    }[task]


def _levels(rows: List[Dict[str, str]], task: str) -> List[str]:
    labels = {r["level"] for r in rows if r["task"] == task}
    return sorted(labels, key=lambda lab: _level_value(task, lab))


def plot_results(rows: List[Dict[str, str]], path: Path, title: str = "") -> Path:
    """Figure-2-style plot: true MSE vs measurement level, one line per method, SEM error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    stats = summarize(rows)
    pasted = summarize(rows, "true_mse_pasted")
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    panels = [(t, stats, TITLES[t]) for t in tasks]
    if "inpainting_random" in tasks:
        # The classical baseline keeps the observed pixels; compare with the outputs that do too.
        merged = dict(stats)
        merged.update({k: v for k, v in pasted.items() if k[0] == "inpainting_random"})
        panels.append(("inpainting_random", merged, "Inpainting, random mask, observed pixels pasted"))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    axes = axes.ravel()
    for ax, (task, st_, panel_title) in zip(axes, panels):
        levels = _levels(rows, task)
        methods = [m for m in ("csgm", "pulse", "ilo", "ilo_best3", "classical")
                   if any((task, lab, m) in st_ for lab in levels)]
        if task == "inpainting_box":
            for i, m in enumerate(methods):
                s = st_.get((task, levels[0], m))
                if s:
                    st = _STYLE[m]
                    ax.bar(i, s["mean"], yerr=s["sem"], color=st["color"], alpha=st.get("alpha", 0.9), capsize=4)
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels([_baseline_of(task) if m == "classical" else LABELS[m].split(" (")[0]
                                for m in methods], rotation=30, ha="right", fontsize=8)
        else:
            for m in methods:
                # A zero error (a fully observed image returned as is) has no place on a log axis.
                pts = [(lab, st_[(task, lab, m)]) for lab in levels
                       if (task, lab, m) in st_ and st_[(task, lab, m)]["mean"] > 0]
                xs = [_level_value(task, lab) for lab, _ in pts]
                ys = [s["mean"] for _, s in pts]
                err = [min(s["sem"], 0.999 * s["mean"]) for _, s in pts]
                label = _baseline_of(task) if m == "classical" else LABELS[m]
                ax.errorbar(xs, ys, yerr=[err, [s["sem"] for _, s in pts]], label=label, capsize=3,
                            markersize=5, **_STYLE[m])
            ax.set_xscale("log", base=2 if task == "superres" else 10)
            ax.set_xticks(sorted(set(_level_value(task, lab) for lab in levels)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(XLABELS[task])
            ax.legend(fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("true MSE ([-1, 1] scale)")
        ax.set_title(panel_title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _cell(s: Optional[Dict[str, float]], digits: int = 4) -> str:
    return "" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _verdict(task: str, ilo: Optional[Dict[str, float]], ilo_pasted: Optional[Dict[str, float]],
             classical: Optional[Dict[str, float]]) -> str:
    """Plain words: who wins between ILO and the classical baseline, by how much (mean true MSE)."""
    ref = ilo_pasted if ilo_pasted is not None else ilo
    if ref is None or classical is None:
        return ""
    name = _baseline_of(task)
    what = "ILO (pasted)" if ilo_pasted is not None else "ILO"
    if max(classical["mean"], ref["mean"]) < 1e-8:
        return "tie: both return the (fully observed) image"
    if classical["mean"] < ref["mean"]:
        return f"**{name} wins**: its MSE is {classical['mean'] / max(ref['mean'], 1e-12):.2f}x {what}'s"
    return f"ILO wins: {name}'s MSE is {classical['mean'] / max(ref['mean'], 1e-12):.2f}x {what}'s"


def results_table(rows: List[Dict[str, str]]) -> str:
    """Markdown tables of mean true MSE (and PSNR/SSIM) per task and grid point."""
    mse = summarize(rows)
    pasted = summarize(rows, "true_mse_pasted")
    psnr = summarize(rows, "psnr")
    ssim = summarize(rows, "ssim")
    lp = summarize(rows, "lpips")
    n_images = len({r["image"] for r in rows})
    out = [
        f"True MSE against the never-observed image, on the [-1, 1] scale (the paper's metric), "
        f"mean ± std over {n_images} images. Lower is better. ILO/CSGM is the ratio of the means "
        f"(target <= 0.50 where marked *). ILO best-of-3 is the secondary protocol (the best of "
        f"radius x0.5/x1/x2 per image, chosen by measurement loss). For inpainting, \"pasted\" puts "
        f"the observed pixels back into the output (the classical baseline keeps them too), and the "
        f"verdict compares it with the baseline.",
        "",
    ]
    for task in [t for t in TASKS if any(r["task"] == t for r in rows)]:
        inp = task.startswith("inpainting")
        base = _baseline_of(task)
        head = ["level", "CSGM", "PULSE-style", "ILO", "ILO/CSGM"]
        if inp:
            head.append("ILO (pasted)")
        head += [base, "ILO best-of-3", "classical vs ILO"]
        out += [f"### {TITLES[task]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for lab in _levels(rows, task):
            g = lambda m, d=mse: d.get((task, lab, m))  # noqa: E731
            ratio = ""
            if g("ilo") and g("csgm"):
                r = g("ilo")["mean"] / g("csgm")["mean"]
                star = "*" if required_point(task, lab) else ""
                ratio = f"{r:.2f}{star}" + (" (miss)" if star and r > 0.5 else "")
            lvl = lab if task != "inpainting_box" else lab
            if task in ("inpainting_random", "compressed_sensing"):
                lvl = f"{100 * float(lab):g}%"
            elif task == "superres":
                lvl = f"x{float(lab):g}"
            elif task == "denoising":
                lvl = f"sigma {float(lab):g}"
            cells = [lvl, _cell(g("csgm")), _cell(g("pulse")), _cell(g("ilo")), ratio]
            if inp:
                cells.append(_cell(pasted.get((task, lab, "ilo"))))
            cells += [_cell(g("classical")), _cell(g("ilo_best3")),
                      _verdict(task, g("ilo"), pasted.get((task, lab, "ilo")) if inp else None, g("classical"))]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += ["### PSNR (dB) / SSIM, mean over images", "",
            "| task | level | CSGM | PULSE-style | ILO | ILO best-of-3 | classical |", "|---|---|---|---|---|---|---|"]
    for task in [t for t in TASKS if any(r["task"] == t for r in rows)]:
        for lab in _levels(rows, task):
            cells = [task, lab]
            for m in ("csgm", "pulse", "ilo", "ilo_best3", "classical"):
                a, b = psnr.get((task, lab, m)), ssim.get((task, lab, m))
                cells.append("" if a is None else f"{a['mean']:.2f} / {b['mean']:.3f}")
            out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if not lp:
        out.append("LPIPS: not measured (the AlexNet backbone weights of LPIPS are not on this machine; "
                   "the CSV column is empty).")
    out.append("")
    return "\n".join(out)


def timing_table(rows: List[Dict[str, str]]) -> str:
    """Markdown table of compute per task: wall seconds summed over grid points, per method."""
    seen: Dict[Tuple[str, str, str], float] = {}
    for r in rows:
        if r["protocol"] == "secondary" or not r.get("seconds"):
            continue
        seen.setdefault((r["task"], r["level"], r["method"]), float(r["seconds"]))
    tasks = [t for t in TASKS if any(k[0] == t for k in seen)]
    methods = sorted({k[2] for k in seen}, key=lambda m: (m not in LABELS, list(LABELS).index(m) if m in LABELS else 0, m))
    out = ["| task | " + " | ".join(methods) + " | total (min) |", "|" + "---|" * (len(methods) + 2)]
    for t in tasks:
        per = {m: sum(v for k, v in seen.items() if k[0] == t and k[2] == m) for m in methods}
        out.append(f"| {t} | " + " | ".join(f"{per[m] / 60:.1f}" for m in methods) + f" | {sum(per.values()) / 60:.1f} |")
    return "\n".join(out) + "\n"


#: Level labels of the README's summary table, per task.
_SUMMARY_LEVEL = {
    "inpainting_random": lambda lab: f"inpainting, {100 * float(lab):g}% observed",
    "inpainting_box": lambda lab: "inpainting, box over the mouth",
    "denoising": lambda lab: f"denoising, sigma {float(lab):g}",
    "superres": lambda lab: f"super-resolution x{float(lab):g}",
    "compressed_sensing": lambda lab: f"CS (partial circulant), m/n {100 * float(lab):g}%",
}


def summary_table(rows: List[Dict[str, str]]) -> str:
    """The README's table: mean true MSE of CSGM, ILO and the classical baseline per grid point.

    Fully observed inpainting (100%) is left out (every method that keeps the
    observed pixels is exact there). For inpainting the verdict compares the
    baseline with ILO's output with the observed pixels pasted back.
    """
    mse = summarize(rows)
    pasted = summarize(rows, "true_mse_pasted")
    out = ["| task, level | CSGM | ILO | ILO / CSGM | classical | classical vs ILO |",
           "| --- | --- | --- | --- | --- | --- |"]
    for task in [t for t in TASKS if any(r["task"] == t for r in rows)]:
        first = True
        for lab in _levels(rows, task):
            if task == "inpainting_random" and float(lab) >= 1.0:
                continue
            csgm, ilo, cls = mse.get((task, lab, "csgm")), mse.get((task, lab, "ilo")), mse.get((task, lab, "classical"))
            if not (csgm and ilo and cls):
                continue
            ratio = ilo["mean"] / csgm["mean"]
            target = " (target 0.5 missed)" if required_point(task, lab) and ratio > 0.5 else ""
            ref = pasted.get((task, lab, "ilo")) if task.startswith("inpainting") else ilo
            rel = cls["mean"] / max(ref["mean"], 1e-12)
            name = _baseline_of(task)
            verdict = f"**classical wins** ({rel:.2f}x)" if cls["mean"] < ref["mean"] else f"ILO wins ({name} {rel:.2f}x)"
            classical = f"{name} {cls['mean']:.4f}" if first else f"{cls['mean']:.4f}"
            out.append(f"| {_SUMMARY_LEVEL[task](lab)} | {csgm['mean']:.4f} | {ilo['mean']:.4f} | "
                       f"{ratio:.2f}{target} | {classical} | {verdict} |")
            first = False
    return "\n".join(out) + "\n"


def write_report(csv_path: Path, out: Path) -> List[Path]:
    """Rebuild the plot and the markdown tables from the CSV; returns the files written.

    Raises:
        FileNotFoundError: if the CSV does not exist.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no results at {csv_path}; run the benchmark first (without --report-only)")
    rows = read_rows(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} holds no result row")
    stem = csv_path.stem
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gens = sorted({r["generator"] for r in rows})
    n_images = len({r["image"] for r in rows})
    png = plot_results(rows, out / f"{stem}.png",
                       title=f"{', '.join(gens)} on {n_images} images: mean true MSE, error bars = standard error over images")
    table = out / f"{stem}_table.md"
    configs = ", ".join(sorted({r["config"] for r in rows if r["protocol"] != "baseline"}))
    table.write_text(
        f"Configs (file@fingerprint): {configs}.\n\n" + results_table(rows)
        + "\n### Summary (the README's table; inpainting verdicts against ILO with the observed pixels pasted back)\n\n"
        + summary_table(rows)
        + "\n### Compute (wall minutes, per method, summed over grid points)\n\n" + timing_table(rows))
    return [png, table]


# ------------------------------------------------------------------------------- cli

def display_path(path: Path) -> str:
    """``path`` relative to the repository root when it is beside it (``../shared/...``), else absolute."""
    here = Path(path).resolve()
    try:
        return os.path.relpath(here, _ROOT) if here.is_relative_to(_ROOT.parent) else str(here)
    except ValueError:  # another drive
        return str(here)


def quiet_run_setup(threads: Optional[int]) -> None:
    """Log to stderr with times, silence Lightning's chatter and set torch's CPU threads."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if threads:
        torch.set_num_threads(threads)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="folder of ground-truth images (e.g. ../shared/benchmark/faces/64)")
    p.add_argument("--tasks", nargs="+", default=["all"],
                   help=f"tasks to run: {', '.join(TASKS)} or {', '.join(ALIASES)} (default all)")
    p.add_argument("--methods", nargs="+", default=None, help=f"methods (default {' '.join(METHODS)})")
    p.add_argument("--quick", action="store_true",
                   help=f"the config's own grid point per task, {QUICK_LIMIT} images, steps x{QUICK_STEPS_SCALE}, no best-of-N")
    p.add_argument("--out", type=Path, default=_ROOT / "benchmarks" / "results", help="results folder")
    p.add_argument("--configs", type=Path, default=_ROOT / "configs", help="folder of the task configs")
    p.add_argument("--seed", type=int, default=0, help="the run seed (problem i uses problem_seed(seed, i))")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--steps-scale", type=float, default=None, help="scale every stage's steps (default 1)")
    p.add_argument("--levels", type=float, nargs="+", default=None, help="override the grid of the tasks run")
    p.add_argument("--csv", default=None, help="CSV file name inside --out")
    p.add_argument("--generator", default="dcgan", help="'dcgan' or a module.Class SplitGenerator")
    p.add_argument("--weights", default=None, help="generator weights (default: the generator's own)")
    p.add_argument("--generator-kwargs", default="{}", help="JSON kwargs of a --generator class")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true", help="only rebuild plots and tables from the CSV")
    p.add_argument("--no-report", action="store_true", help="do not rebuild the report after the run")
    ns = p.parse_args(argv)

    quiet_run_setup(ns.threads)
    methods = tuple(ns.methods) if ns.methods else (QUICK_METHODS if ns.quick else METHODS)
    settings = BenchmarkSettings(
        images=ns.images if ns.images is not None else Path("."),
        out=ns.out,
        tasks=expand_tasks(ns.tasks),
        methods=methods,
        config_dir=ns.configs,
        seed=ns.seed,
        limit=ns.limit if ns.limit is not None else (QUICK_LIMIT if ns.quick else None),
        steps_scale=ns.steps_scale if ns.steps_scale is not None else (QUICK_STEPS_SCALE if ns.quick else 1.0),
        levels=ns.levels,
        quick=ns.quick,
        csv_name=ns.csv,
    )
    if not ns.report_only:
        if ns.images is None:
            p.error("--images is required (unless --report-only)")
        generator = build_generator(ns.generator, ns.weights, json.loads(ns.generator_kwargs))
        t0 = time.perf_counter()
        log.info("load average at start: %s", " ".join(f"{v:.2f}" for v in os.getloadavg()))
        run_benchmark(settings, generator, ns.generator)
        log.info("done in %.1f min (load average now %s)", (time.perf_counter() - t0) / 60,
                 " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if not ns.no_report:
        for path in write_report(settings.csv_path, settings.out):
            log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
