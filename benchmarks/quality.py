"""Quality benchmark: ILO vs CSGM, PULSE-style and classical baselines on a folder of images.

Usage (from the repository root)::

    python -m benchmarks.quality --images ../shared/benchmark/faces/64            # full grid
    python -m benchmarks.quality --images ../shared/benchmark/faces/64 --quick    # < 10 min
    python -m benchmarks.quality --images ... --tasks inpainting denoising        # one part
    python -m benchmarks.quality --out benchmarks/results --report-only           # plots/table only

For every task and grid point (measurement level) all images are solved as
ONE batch (the engine solves each sample as if alone) by every method:

* ``csgm``: the config's first stage alone, for the schedule's total steps;
* ``pulse``: the same, with the latent kept on its sphere (``sphere=True``);
* ``ilo``: the config's full stage schedule (the primary result);
* ``ilo_r0.5``, ``ilo_r2``: the schedule with all radii scaled by 0.5 / 2
  (sweep); with ``ilo`` they form the secondary ``ilo_best3`` result, the best
  of the three per image chosen by the *measurement* loss (never the true error);
* ``ilo_plus`` (ILO+): the config with its ILO+ overlay ``configs/plus/<task>.yaml``
  layered on top (as ``ilo-pl fit --config configs/<task>.yaml --config
  configs/plus/<task>.yaml``): the options tuned by ``benchmarks/tune.py --plus``
  (ST-LPIPS term, restarts, final consistency step, radii), at the config's steps;
* ``ilo_plus_eq``: ILO+ at CSGM's compute: every stage's steps scaled so that
  the latent-steps (restarts x steps, summed over stages) equal CSGM's; run only
  when ILO+ has restarts (without them it is ``ilo_plus`` itself);
* the classical baseline of the task (see :mod:`benchmarks.baselines`).

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
grid run in parts (``--tasks``), resumes. A method whose config changed since
its rows were written is refused (the earlier rows are never overwritten or
mixed in): move the CSV away or pass ``--csv``. Options added to ilo-pl after
rows were written (:data:`NEUTRAL_DEFAULTS`) do not change a fingerprint while
they keep the value that solves as before they existed.
The report (``<csv stem>.png``, ``<csv stem>_table.md``; :mod:`benchmarks.report`)
is rebuilt from the whole CSV after each run.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.quality`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import csv
import dataclasses
import importlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from benchmarks.baselines import baseline_name, classical_baseline
from benchmarks.common import RESULTS, ROOT, quiet_run_setup, read_rows
from benchmarks.report import write_report
from ilo_pl.config import build_from_config
from ilo_pl.lightning_cli import ADDED_OPTION_DEFAULTS
from ilo_pl.metrics import image_metrics
from ilo_pl.modules.generators import LatentSphere
from ilo_pl.modules.generators.base import SplitGenerator
from ilo_pl.operators import Inpainting
from ilo_pl.problem import ProblemBatch
from ilo_pl.stages import Stage

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
METHODS = ("csgm", "pulse", "ilo", "ilo_plus", "ilo_plus_eq", "classical", "ilo_best3")
#: The methods solved with the task's ILO+ overlay (``configs/plus/<task>.yaml``).
PLUS_METHODS = ("ilo_plus", "ilo_plus_eq")
#: Folder of the ILO+ overlays, inside the configs folder.
PLUS_DIR = "plus"
#: Steps scale, images and methods of ``--quick``.
QUICK_STEPS_SCALE, QUICK_LIMIT = 0.25, 2
QUICK_METHODS = ("csgm", "pulse", "ilo", "classical")

COLUMNS = [
    "run", "task", "level", "method", "protocol", "image", "seed", "steps",
    "true_mse", "psnr", "ssim", "lpips", "stlpips", "true_mse_pasted", "psnr_pasted", "ssim_pasted",
    "measurement_loss", "selected", "seconds", "generator", "config",
]
#: The columns of CSVs written before the ``stlpips`` column (upgraded in place, the column empty).
LEGACY_COLUMNS = [c for c in COLUMNS if c != "stlpips"]


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
        overlays: config files layered on top of ``path`` (ILO+: ``configs/plus/<task>.yaml``).
    """

    path: Path
    stages: List[Stage]
    module_kwargs: Dict[str, Any]
    operator_class: str
    operator_args: Dict[str, Any]
    level_key: str
    fingerprint: str = ""
    trainer_kwargs: Dict[str, Any] = field(default_factory=dict)
    overlays: Tuple[Path, ...] = ()

    @property
    def paths(self) -> List[Path]:
        """The config files, layered in order (``--config`` each)."""
        return [self.path, *self.overlays]

    @property
    def config_level(self) -> Any:
        """The grid point the config itself solves."""
        return self.operator_args.get(self.level_key)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def label(self) -> str:
        """``<file>[+plus/<file>]@<fingerprint>``: the CSV's ``config`` column."""
        names = [self.path.name] + [f"{o.parent.name}/{o.name}" for o in self.overlays]
        return f"{'+'.join(names)}@{self.fingerprint}"


#: Resolved config entries the benchmarks set themselves, left out of a config's fingerprint
#: (``sna`` and ``tune`` use them too).
FINGERPRINT_EXCLUDE = ("data.data", "data.limit", "data.batch_size", "model.log_every")
#: Options added after results were first recorded, and the value that solves exactly as before
#: they existed: left out of a fingerprint at that value, so earlier rows stay this config's
#: (the CLI's resume check treats them the same way).
NEUTRAL_DEFAULTS: Dict[str, Any] = dict(ADDED_OPTION_DEFAULTS)


def neutral_excludes(config: Mapping[str, Any]) -> Tuple[str, ...]:
    """The :data:`NEUTRAL_DEFAULTS` keys ``config`` sets to their neutral value (or leaves out)."""
    out = []
    for key, neutral in NEUTRAL_DEFAULTS.items():
        node: Any = config
        for part in key.split("."):
            node = node.get(part, neutral) if isinstance(node, Mapping) else neutral
        if node == neutral:
            out.append(key)
    return tuple(out)


def load_task_config(task: str, config_dir: Path, plus: bool = False) -> TaskConfig:
    """Read ``configs/<task>.yaml`` through the command line's parser (``build_from_config``).

    Every module option of the config reaches the benchmark's solves: nothing
    is picked by name, so an option the benchmark does not know is not dropped.
    With ``plus`` the task's ILO+ overlay ``configs/plus/<task>.yaml`` is layered
    on top (later files win, as repeated ``--config``).

    Raises:
        FileNotFoundError: if the config (or, with ``plus``, its overlay) is missing.
        ValueError: if the parser rejects it, or it weighs a loss other than MSE
            (and, with ``plus``, ST-LPIPS).
    """
    name, level_key = TASKS[task]
    path = Path(config_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"config {path} of task {task!r} does not exist; pass --configs DIR")
    overlays: Tuple[Path, ...] = ()
    if plus:
        overlay = Path(config_dir) / PLUS_DIR / name
        if not overlay.is_file():
            raise FileNotFoundError(f"ILO+ overlay {overlay} of task {task!r} does not exist: add it, pass "
                                    f"--configs DIR with a {PLUS_DIR}/ folder, or leave ILO+ out (--methods)")
        overlays = (overlay,)
    built = build_from_config([path, *overlays])
    if overlays:
        base_data = build_from_config([path]).config.get("data")
        if json.dumps(built.config.get("data"), sort_keys=True, default=str) != json.dumps(
                base_data, sort_keys=True, default=str):
            raise ValueError(f"{overlays[0]} changes the data section of {path}: an ILO+ overlay may change the "
                             "solver (model), not the problems; remove its data entries")
    where = " + ".join(str(p) for p in (path, *overlays))
    kwargs = {k: v for k, v in built.module_kwargs.items() if k not in ("generator", "stages")}
    stages = list(built.module.stages)
    if not stages:
        raise ValueError(f"{path} has no model.stages; the benchmark runs the config's stage schedule")
    allowed = {"mse", "stlpips"} if plus else {"mse"}
    weights = dict(kwargs.get("loss_weights") or {"mse": 1.0})
    other = sorted(k for k, w in weights.items() if k not in allowed and w)
    if other or any(set(k for k, w in (s.loss_weights or {}).items() if w) - allowed for s in stages):
        raise ValueError(
            f"{where} weighs loss terms {other or 'per stage'} besides {' and '.join(sorted(allowed))}; the "
            "quality benchmark compares measurement-loss solvers (ILO+ may add ST-LPIPS): remove them from "
            "the config or extend the benchmark"
        )
    op = (built.config.get("data") or {}).get("operator") or {}
    if not isinstance(op, dict) or "class_path" not in op:
        raise ValueError(f"{path} has no data.operator.class_path")
    exclude = FINGERPRINT_EXCLUDE + (f"data.operator.init_args.{level_key}",) + neutral_excludes(built.config)
    if level_key == "ratio":
        exclude += ("data.operator.init_args.m",)
    return TaskConfig(path, stages, kwargs, op["class_path"], dict(op.get("init_args") or {}), level_key,
                      built.fingerprint(exclude=exclude), dict(built.trainer_kwargs), overlays)


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


def latent_steps(stages: Sequence[Stage], restarts: int = 1, keep: Optional[int] = None) -> int:
    """Compute of a schedule in latent-steps: every stage's steps times the restarts it runs on
    (all ``restarts`` in the first stage, ``keep`` of them (default all) in the later ones)."""
    if not stages:
        return 0
    rest = keep if keep is not None else restarts
    return stages[0].steps * restarts + sum(s.steps for s in stages[1:]) * rest


def plus_plans(plus: TaskConfig, steps_scale: float, csgm_steps: int) -> Dict[str, Tuple[List[Stage], Dict[str, Any]]]:
    """``ilo_plus`` (the ILO+ config's schedule) and, when it has restarts, ``ilo_plus_eq``: the same
    with every stage's steps scaled so that its latent-steps (:func:`latent_steps`) are CSGM's
    ``csgm_steps`` (CSGM solves one latent per problem)."""
    stages = scaled_stages(plus.stages, steps_scale)
    kwargs = dict(plus.module_kwargs)
    plans = {"ilo_plus": (stages, kwargs)}
    restarts, keep = int(kwargs.get("restarts") or 1), kwargs.get("restart_keep")
    cost = latent_steps(stages, restarts, keep)
    if restarts > 1 and cost > csgm_steps:
        plans["ilo_plus_eq"] = (scaled_stages(plus.stages, steps_scale * csgm_steps / cost), kwargs)
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


def pulse_generator(generator: SplitGenerator) -> SplitGenerator:
    """The generator PULSE solves with: ``generator``, or :class:`~ilo_pl.modules.generators.LatentSphere`
    around it when it declares no sphere at split 0 (PULSE keeps the input latent on its sphere).

    The other methods use ``generator`` itself, as ``ilo-pl fit`` would with the same config.
    """
    return generator if generator.sphere_variables(0) else LatentSphere(generator)

# ---------------------------------------------------------------------------- metrics
class LPIPSMetric:
    """LPIPS (AlexNet, the metric's usual backbone) when its ImageNet weights are on disk.

    Never downloads: :attr:`net` is ``None`` (and the CSV column stays
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

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor) -> Optional[Tensor]:
        if self.net is None:
            return None
        return self.net.distance(pred.float(), target.float()).cpu()


def stlpips_reason() -> str:
    """Where the ``stlpips`` column comes from, or why it stays empty."""
    from ilo_pl.losses.stlpips import weights_path
    from ilo_pl.metrics import STLPIPS_NET

    try:
        return f"ST-LPIPS ({STLPIPS_NET}) from {weights_path(STLPIPS_NET)}"
    except FileNotFoundError as err:
        return f"stlpips column empty: {err}"


def evaluate(
    images: Tensor, batch: ProblemBatch, lpips_metric: Optional[LPIPSMetric] = None
) -> Dict[str, Optional[Tensor]]:
    """Per-image metrics of ``images`` against the never-observed ground truth.

    ``true_mse`` is on the ``[-1, 1]`` scale (the paper's metric); PSNR/SSIM on
    ``[0, 1]``; ``stlpips`` is ST-LPIPS (AlexNet; :func:`ilo_pl.metrics.stlpips`;
    ``None`` without the ``stlpips-pytorch`` weights) and ``lpips`` LPIPS
    (:class:`LPIPSMetric`, ``None`` without its backbone weights). For
    inpainting the ``*_pasted`` metrics are those of the output with the
    observed pixels pasted back (``operator.superimpose``).
    """
    target = batch.target.float().cpu()
    images = images.float().cpu()
    op = batch.operator.cpu()
    y = batch.observation.cpu()
    out: Dict[str, Optional[Tensor]] = dict(image_metrics(images, target, perceptual=True))
    out.setdefault("stlpips", None)
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
                  limit: Optional[int], indices: Optional[Sequence[int]] = None) -> ProblemBatch:
    """All problems of one grid point (or those of ``indices``) as one batch, made by the config's data module.

    The data module is built from the config through the command line's parser
    (with the grid point's overrides), so every ``data`` option (``resize``,
    the operator's other arguments, ...) applies as in ``ilo-pl fit``. A problem
    is the same whichever others are in its batch.
    """
    dm = build_from_config(cfg.paths, data_overrides(cfg, level, images, seed, limit)).datamodule
    dm.bind(generator)
    return dm.make_batch(dm.problem_indices() if indices is None else list(indices))


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


def base_label(config: str) -> str:
    """The task config's part of a ``config`` column (ILO+ rows: before ``+plus/``)."""
    return config.split("+" + PLUS_DIR + "/", 1)[0]


def plus_label(base: str, plus: TaskConfig) -> str:
    """The ``config`` column of ILO+ rows: the task's own label, then ``+plus/<file>@<fingerprint>``
    (of the config with its overlay)."""
    return f"{base}+{PLUS_DIR}/{plus.path.name}@{plus.fingerprint}"


class CsvLog:
    """Append-only CSV of result rows; knows which (run, task, level, method, image, config) are done.

    Rows are never rewritten (a CSV written before the ``stlpips`` column
    gets that column, empty, once). A config that changed since its rows were made
    (another fingerprint in the ``config`` column) is refused rather than mixed
    in or silently re-run over the earlier rows.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_rows(self.path)
        if rows and list(rows[0].keys()) == LEGACY_COLUMNS:
            self._add_stlpips_column(rows)
            rows = read_rows(self.path)
        if rows and list(rows[0].keys()) != COLUMNS:
            raise ValueError(
                f"{self.path} has other columns than this benchmark writes; move it away or pass another --out"
            )
        self.done = {(r["run"], r["task"], r["level"], r["method"], r["image"], r["config"]) for r in rows}
        self.configs: Dict[Tuple[str, str, str], set] = {}
        for r in rows:
            self.configs.setdefault((r["run"], r["task"], r["method"]), set()).add(r["config"])

    def _add_stlpips_column(self, rows: List[Dict[str, str]]) -> None:
        """Rewrite a CSV of the columns before ``stlpips`` with that column added, empty (every value kept)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in rows:
                r["stlpips"] = ""
                w.writerow({k: r[k] for k in COLUMNS})
        os.replace(tmp, self.path)
        log.info("%s: added the (empty) stlpips column to its %d earlier rows", self.path, len(rows))

    def check_config(self, run: str, task: str, method: str, config: str) -> None:
        """Refuse to add ``method``'s rows of ``task`` made with ``config`` beside rows of another config.

        Two checks: the method's own rows (ILO+ has a config of its own: the
        task's config with its overlay) and, across every method of the task,
        the task's config itself (the part of the label before ``+plus/``), so
        ILO+ rows of a changed task config never sit beside the other methods'
        earlier rows.

        Raises:
            ValueError: naming the configs and how to keep the earlier rows.
        """
        other = sorted(self.configs.get((run, task, method), set()) - {config})
        bases = sorted({base_label(c) for (r, t, _), cs in self.configs.items() if (r, t) == (run, task)
                        for c in cs} - {base_label(config)})
        if other or bases:
            raise ValueError(
                f"{self.path} holds {task} {'' if bases else method + ' '}rows made with another config "
                f"({', '.join(other or bases)}; now {config if other else base_label(config)}): the config (or "
                f"the steps scale) changed since. Its earlier rows are kept: move {self.path.name} away (e.g. to "
                "benchmarks/results/archive/) or pass --csv NAME for a new table"
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
                self.configs.setdefault((r["run"], r["task"], r["method"]), set()).add(r["config"])


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
    config_dir: Path = ROOT / "configs"
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
    pulse = pulse_generator(generator)
    if pulse is not generator:
        log.warning("%s declares no sphere at split 0: PULSE keeps its split-0 latents on a sphere "
                    "(LatentSphere); the other methods use it as the configs do", type(generator).__name__)
    lpips_metric = LPIPSMetric()
    log.info("%s", lpips_metric.reason)
    log.info("%s", stlpips_reason())
    store = CsvLog(settings.csv_path)
    size = int(generator.image_shape[-1])
    suffix = ((f"x{settings.steps_scale:g}" if settings.steps_scale != 1.0 else "")
              + (f"s{settings.seed}" if settings.seed != 0 else ""))
    for task in settings.tasks:
        cfg = load_task_config(task, settings.config_dir)
        plans = method_plans(cfg, settings.steps_scale)
        wanted = [m for m in settings.methods if m != "ilo_best3"]
        if "ilo_best3" in settings.methods:
            wanted += [m for m in ("ilo", *[f"ilo_r{r:g}" for r in RADIUS_SCALES if r != 1.0]) if m not in wanted]
        # The CSV's config column per method: ILO+ rows carry the config with its overlay.
        labels = {m: cfg.label + suffix for m in wanted + ["ilo_best3"] if m not in PLUS_METHODS}
        if any(m in PLUS_METHODS for m in wanted):
            plus = load_task_config(task, settings.config_dir, plus=True)
            plans.update(plus_plans(plus, settings.steps_scale, sum(s.steps for s in plans["csgm"][0])))
            labels.update({m: plus_label(cfg.label + suffix, plus) for m in PLUS_METHODS})
        for method in wanted:
            store.check_config(settings.run, task, baseline_name(task) if method == "classical" else method,
                               labels[method])
        if settings.quick:
            levels = [cfg.config_level]
        elif settings.levels is not None and task != "inpainting_box":
            levels = list(settings.levels)
        else:
            levels = grid_levels(task, cfg.config_level, size)
        for level in levels:
            label = level_label(task, level)
            batch = make_problems(cfg, level, images, generator, settings.seed, settings.limit)
            for method in wanted:
                if method == "ilo_plus_eq" and method not in plans:
                    log.info("%s %s: ILO+ spends no more latent-steps than CSGM (no restarts), so at CSGM's "
                             "compute it is ilo_plus itself", task, label)
                    continue
                config_label = labels[method]
                common = dict(run=settings.run, task=task, level=label, generator=gen_name, config=config_label)
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
                    solver = pulse if method == "pulse" else generator
                    trainer = (plus if method in PLUS_METHODS else cfg).trainer_kwargs
                    out, secs = solve_batch(solver, batch, stages, kwargs, trainer)
                    protocol = "primary" if method in ("csgm", "pulse", "ilo", *PLUS_METHODS) else "sweep"
                    restarts, keep = int(kwargs.get("restarts") or 1), kwargs.get("restart_keep")
                    row = dict(common, method=method, protocol=protocol, steps=latent_steps(stages, restarts, keep))
                rows = metric_rows(row, batch, evaluate(out, batch, lpips_metric), secs)
                store.write(rows)
                log.info("%s %s %-10s %6.1fs  true MSE %.4f", task, label, row["method"], secs,
                         sum(float(r["true_mse"]) for r in rows) / len(rows))
            config_label = labels["ilo_best3"]
            if "ilo_best3" in settings.methods and not store.has(settings.run, task, label, "ilo_best3", batch.ids,
                                                                 config_label):
                sweep = ["ilo"] + [f"ilo_r{r:g}" for r in RADIUS_SCALES if r != 1.0]
                have = [r for r in read_rows(store.path)
                        if r["run"] == settings.run and r["task"] == task and r["level"] == label
                        and r["config"] == config_label]
                store.write(best_of_rows(have, sweep, "ilo_best3"))
    return store.path


# ------------------------------------------------------------------------------- cli
def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="folder of ground-truth images (e.g. ../shared/benchmark/faces/64)")
    p.add_argument("--tasks", nargs="+", default=["all"],
                   help=f"tasks to run: {', '.join(TASKS)} or {', '.join(ALIASES)} (default all)")
    p.add_argument("--methods", nargs="+", default=None, help=f"methods (default {' '.join(METHODS)})")
    p.add_argument("--quick", action="store_true",
                   help=f"the config's own grid point per task, {QUICK_LIMIT} images, steps x{QUICK_STEPS_SCALE}, no best-of-N")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--configs", type=Path, default=ROOT / "configs", help="folder of the task configs")
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
    raise SystemExit(main())
