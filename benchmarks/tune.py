"""Tune the DCGAN task configs' stage schedules on the tuning faces (never on the evaluation faces).

For each task of :mod:`benchmarks.quality` (at the grid point its config
solves: 10% random pixels, the mouth box, sigma 50, 4x, m/n 10%), every
candidate schedule of a small grid solves all tuning images as one problem
batch (each problem is solved as if alone: the loss is summed over the batch)
and is scored by the mean true MSE over the images ([-1, 1] scale, the
benchmark's metric). Every candidate spends :data:`TOTAL_STEPS` steps per
problem: some on CSGM (stage 0, on ``z``), the rest split equally over the ILO
stages (splits 1-4). The grid (:data:`GRID`) has two phases, 8 solves per task:

1. 200 CSGM steps, crossing the ILO stages' learning rate (0.01, 0.03) with a
   scale (0.5, 1, 2) of their l1 radii :data:`BASE_RADII`;
2. phase 1's best learning rate and radius scale with 100 and 300 CSGM steps.

The best candidate of both phases (lowest mean true MSE) is the task's pick.

Stage 0's learning rate is :data:`CSGM_LR`. Everything else comes from the
task's config, read by the command line's parser (the stages' splits, free
groups and per-stage SNA, and every module option: ``sna``, ``sphere``,
``selection``, ...), and the problems are those its data module makes for the
folder with ``--seed``. The grid is absolute (it does not scale the config's
current values), so re-running after the configs took the tuned values
reproduces the same rows.

Rows (one per task, candidate and image) are appended to
``benchmarks/results/tuning.csv``; rows already there are skipped, so a
killed run resumes. A per-task ranking goes to ``tuning_table.md`` beside it.
The evaluation folders (``faces/64``, ``faces/original`` of
``../shared/benchmark``) and any folder holding one of their files are refused.

    python -m benchmarks.tune --threads 1                           # ../shared/benchmark/faces/tune
    python -m benchmarks.tune --tasks denoising --threads 1         # one task
    python -m benchmarks.tune --report-only                         # the ranking from the CSV
    python -m benchmarks.tune --plus --threads 1                    # the ILO+ grid (below)

**The ILO+ grid** (``--plus``; rows in ``tuning_plus.csv``, ranking in
``tuning_plus_table.md``) tunes the options ILO+ adds on top of a task's tuned
config (``configs/plus/<task>.yaml``, applied after ``configs/<task>.yaml``),
at the task's scarcest grid point of the quality benchmark's targets
(:data:`PLUS_LEVELS`: 5% random pixels, the mouth box, sigma 100, 8x, m/n 5%),
where ILO loses most. Phase 1 tries one option at a time against the config
itself (``ilo``): an ST-LPIPS term (AlexNet, 64x64) of weight
:data:`PLUS_STLPIPS` beside the MSE, the ILO stages' l1 radii x0.5 and x2, random
restarts (4 starts, the best 1 kept after CSGM), the mean of
:data:`PLUS_AVERAGE` restarts (``restart_average``: all of them run every
stage, and the image returned is their mean), and the final consistency step
(``project`` on noiseless, ``prox`` on noisy observations). Phase 2 combines
every option that beat ``ilo`` by 1% (the best ST-LPIPS weight and radius of those), and
crosses a mean over restarts that gained with the radius scales x0.5 and x2.
Phase 3: when the best candidate's radius scale is at the grid's edge (x2 or
x0.5), it is pushed one factor 2 further, up to twice, while that helps.
Phase 4: when the pick averages restarts, the same candidate with twice as
many (:data:`PLUS_AVERAGE_GROWTH`). The pick (:func:`plus_pick`) is the best
*justified* candidate: one that beats every simpler candidate that was run
(:func:`nested`: each of its options unset or the same, no more restarts) by 1%
and by a mean paired per-image difference beyond its standard error; ``ilo``
itself is always justified. A gain inside the noise of twelve faces does not
buy an option. Each
candidate spends the config's steps per problem (restarts run CSGM on all
starts: more compute at equal steps).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.tune`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from benchmarks import quality
from benchmarks.common import RESULTS, ROOT, SHARED, display_path, quiet_run_setup, read_rows
from ilo_pl.config import build_from_config, config_fingerprint
from ilo_pl.metrics import image_metrics
from ilo_pl.stages import Stage

log = logging.getLogger("tune")

FACES = SHARED / "benchmark" / "faces"
#: The tuning faces (see ../shared/benchmark/README.md).
TUNE_IMAGES = FACES / "tune"
#: Evaluation folders: never tuned on.
EVAL_FOLDERS = (FACES / "64", FACES / "original")

#: Steps per problem of every candidate (as in the shipped schedules).
TOTAL_STEPS = 400
#: Stage 0's (CSGM on ``z``) learning rate.
CSGM_LR = 0.1
#: l1 radii of the ILO stages at splits 1, 2, 3, 4 at radius scale 1.
BASE_RADII = (500.0, 300.0, 300.0, 300.0)


@dataclass(frozen=True)
class Candidate:
    """One schedule of the grid."""

    csgm_steps: int
    ilo_lr: float
    radius_scale: float

    @property
    def name(self) -> str:
        return f"z{self.csgm_steps}_lr{self.ilo_lr:g}_r{self.radius_scale:g}"


#: Phase 1 of the grid: CSGM steps (the rest split equally over the ILO stages) x ILO lr x radius
#: scale; phase 2 (``split_steps``): the best (lr, radius scale) of phase 1 with other CSGM steps.
GRID: Dict[str, Tuple[Any, ...]] = {
    "csgm_steps": (200,),
    "ilo_lr": (0.01, 0.03),
    "radius_scale": (0.5, 1.0, 2.0),
    "split_steps": (100, 300),
}
#: A tiny grid for smoke runs (``--grid smoke``).
SMOKE_GRID: Dict[str, Tuple[Any, ...]] = {
    "csgm_steps": (200,), "ilo_lr": (0.01, 0.03), "radius_scale": (1.0,), "split_steps": (300,),
}

COLUMNS = ["task", "level", "candidate", "csgm_steps", "ilo_steps", "csgm_lr", "ilo_lr", "radius_scale", "radii",
           "image", "seed", "true_mse", "psnr", "ssim", "measurement_loss", "seconds", "steps_scale", "images",
           "config"]


def candidates(grid: Dict[str, Tuple[Any, ...]] = GRID) -> List[Candidate]:
    """Phase 1: every combination of ``csgm_steps`` x ``ilo_lr`` x ``radius_scale``, in a fixed order."""
    return [Candidate(int(z), float(lr), float(r))
            for z, lr, r in itertools.product(grid["csgm_steps"], grid["ilo_lr"], grid["radius_scale"])]


def split_candidates(best: Candidate, grid: Dict[str, Tuple[Any, ...]] = GRID) -> List[Candidate]:
    """Phase 2: ``best``'s learning rate and radius scale with each of the grid's ``split_steps``."""
    return [Candidate(int(z), best.ilo_lr, best.radius_scale) for z in grid.get("split_steps", ())
            if int(z) != best.csgm_steps]


def candidate_stages(config_stages: Sequence[Stage], cand: Candidate, total: int = TOTAL_STEPS,
                     steps_scale: float = 1.0) -> List[Stage]:
    """The config's stages with the candidate's steps, learning rates and radii.

    Stage 0 (split 0) gets ``cand.csgm_steps`` steps at :data:`CSGM_LR`; the
    later stages share the remaining steps equally, with ``cand.ilo_lr`` and
    :data:`BASE_RADII` (one per ILO stage) times ``cand.radius_scale`` on the
    groups the config constrains. Other stage fields (``free``, ``sna``, loss
    weights) are the config's.

    Raises:
        ValueError: if the config's schedule does not fit the grid (not one split-0
            stage and as many later stages as :data:`BASE_RADII`), or the steps do not split evenly.
    """
    first, rest = config_stages[0], list(config_stages[1:])
    if first.split != 0 or len(rest) != len(BASE_RADII) or any(s.split == 0 for s in rest):
        raise ValueError(f"the tuning grid expects one split-0 stage and {len(BASE_RADII)} later stages; "
                         f"the config has splits {[s.split for s in config_stages]}")
    left = total - cand.csgm_steps
    if left <= 0 or left % len(rest):
        raise ValueError(f"{total} - {cand.csgm_steps} CSGM steps do not split evenly over {len(rest)} ILO stages")
    each = left // len(rest)

    def scaled(n: int) -> int:
        return max(1, int(round(n * steps_scale)))

    out = [dataclasses.replace(first, steps=scaled(cand.csgm_steps), lr=CSGM_LR, free=list(first.free),
                               radius=dict(first.radius))]
    for st, base in zip(rest, BASE_RADII):
        groups = list(st.radius) or ["state"]
        out.append(dataclasses.replace(st, steps=scaled(each), lr=cand.ilo_lr, free=list(st.free),
                                       radius={g: base * cand.radius_scale for g in groups}))
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_tuning_folder(images: Path, eval_folders: Iterable[Path] = EVAL_FOLDERS) -> None:
    """Refuse to tune on the evaluation faces.

    Refused: an evaluation folder itself (or a folder inside one), any folder
    named ``faces/64`` or ``faces/original``, and any folder holding a file
    whose bytes equal a file of an evaluation folder (a copy).

    Raises:
        ValueError: naming the reason.
        FileNotFoundError: if ``images`` is not a folder.
    """
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"tuning folder {images} does not exist")
    here = images.resolve()
    if here.parent.name == "faces" and here.name in ("64", "original"):
        raise ValueError(f"{images} is an evaluation folder (faces/{here.name}); tune on faces/tune only")
    eval_digests: Dict[str, Path] = {}
    for folder in eval_folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        ev = folder.resolve()
        if here == ev or ev in here.parents:
            raise ValueError(f"{images} is the evaluation folder {folder}; tune on faces/tune only")
        for f in ev.iterdir():
            if f.is_file():
                eval_digests[_digest(f)] = f
    for f in sorted(here.iterdir()):
        if f.is_file():
            hit = eval_digests.get(_digest(f))
            if hit is not None:
                raise ValueError(f"{f} is a copy of the evaluation image {hit}; tune on faces/tune only")


def structure_fingerprint(config: Dict[str, Any], level_key: str) -> str:
    """The config's fingerprint without what the grid sets (stage steps, lr, radius) or the benchmark sets."""
    cfg = json.loads(json.dumps(config, default=str))
    for st in (cfg.get("model") or {}).get("stages") or []:
        for k in ("steps", "lr", "radius"):
            st.pop(k, None)
    exclude = list(quality.FINGERPRINT_EXCLUDE) + [f"data.operator.init_args.{level_key}"]
    return config_fingerprint(cfg, exclude=exclude)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def append_rows(path: Path, rows: Sequence[Dict[str, Any]], columns: Sequence[str] = COLUMNS) -> None:
    """Append ``rows`` to the CSV (header first if it is new); earlier rows are never rewritten.

    Raises:
        ValueError: if the CSV has other columns.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = read_rows(path)
    if old and list(old[0].keys()) != list(columns):
        raise ValueError(f"{path} has other columns than tune.py writes; move it away or pass --csv")
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in columns})


@dataclass
class Score:
    """Mean metrics of one (task, candidate) over its images."""

    task: str
    level: str
    candidate: str
    n: int
    true_mse: float
    sem: float
    psnr: float
    config: str


def scores(rows: Sequence[Dict[str, str]]) -> Dict[Tuple[str, str, str, str], List[Score]]:
    """Per (task, config, image folder, steps scale), the candidates' mean scores, best (lowest mean true MSE) first."""
    groups: Dict[Tuple[str, str, str, str, str, str], List[Dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["config"], r["images"], r["steps_scale"], r["level"], r["candidate"]),
                          []).append(r)
    out: Dict[Tuple[str, str, str, str], List[Score]] = {}
    for (task, cfg, images, scale, level, cand), rs in groups.items():
        v = [float(r["true_mse"]) for r in rs]
        n = len(v)
        mean = sum(v) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0
        out.setdefault((task, cfg, images, scale), []).append(
            Score(task, level, cand, n, mean, sd / math.sqrt(n), sum(float(r["psnr"]) for r in rs) / n, cfg))
    for key in out:
        out[key].sort(key=lambda s: s.true_mse)
    order = list(quality.TASKS)
    return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else 99, kv[0])))


def report(rows: Sequence[Dict[str, str]]) -> str:
    """Markdown: per task, every candidate's mean true MSE (± standard error) and PSNR, best first."""
    lines = ["Tuning grid of `benchmarks/tune.py`: mean true MSE ([-1, 1] scale, ± standard error over images) "
             "and mean PSNR (dB) per candidate, best first. Candidates are `z<CSGM steps>_lr<ILO lr>_r<radius "
             f"scale>`: {TOTAL_STEPS} steps per problem in all, CSGM lr {CSGM_LR:g}, the rest split equally over "
             f"the ILO stages (splits 1-4) with l1 radii {'/'.join(f'{r:g}' for r in BASE_RADII)} x the scale.", ""]
    for (task, cfg, images, scale), ss in scores(rows).items():
        extra = "" if float(scale) == 1.0 else f", steps x{scale}"
        lines += [f"### {task} ({ss[0].level}; {cfg}; {ss[0].n} images of {images}{extra})", "",
                  "| candidate | true MSE | PSNR | images |", "|---|---|---|---|"]
        for i, s in enumerate(ss):
            name = f"**{s.candidate}**" if i == 0 else s.candidate
            lines.append(f"| {name} | {s.true_mse:.5f} ± {s.sem:.5f} | {s.psnr:.2f} | {s.n} |")
        lines.append("")
    return "\n".join(lines)


def tune(images: Path, out_csv: Path, tasks: Sequence[str], grid: Dict[str, Tuple[Any, ...]] = GRID,
         config_dir: Path = ROOT / "configs", seed: int = 0, limit: Optional[int] = None,
         steps_scale: float = 1.0) -> Path:
    """Run every (task, candidate) not yet in ``out_csv``; returns the CSV path.

    Raises:
        ValueError: for an evaluation folder (:func:`check_tuning_folder`), or a config the grid does not fit.
    """
    check_tuning_folder(images)
    where = display_path(images)
    for task in tasks:
        cfg = quality.load_task_config(task, config_dir)
        built = build_from_config([cfg.path])
        label = f"{cfg.path.name}@{structure_fingerprint(built.config, cfg.level_key)}"
        level = cfg.config_level
        gen = built.module.generator
        batch = quality.make_problems(cfg, level, images, gen, seed, limit)
        means: Dict[Candidate, float] = {}
        phase1 = candidates(grid)
        for phase in (1, 2):
            cands = phase1 if phase == 1 else split_candidates(min(phase1, key=means.__getitem__), grid)
            for cand in cands:
                rows = [r for r in read_rows(out_csv)
                        if (r["task"], r["candidate"], r["config"], r["images"], r["steps_scale"])
                        == (task, cand.name, label, where, _fmt(steps_scale))]
                if {r["image"] for r in rows} >= set(batch.ids):
                    rows = [r for r in rows if r["image"] in set(batch.ids)]
                    means[cand] = sum(float(r["true_mse"]) for r in rows) / len(rows)
                    continue
                stages = candidate_stages(cfg.stages, cand, steps_scale=steps_scale)
                images_out, secs = quality.solve_batch(gen, batch, stages, cfg.module_kwargs, cfg.trainer_kwargs)
                m = image_metrics(images_out.float(), batch.target.float())
                with torch.no_grad():
                    ml = batch.operator.measurement_error(batch.operator.A(images_out.float()),
                                                          batch.observation).float()
                rows = [dict(
                    task=task, level=quality.level_label(task, level), candidate=cand.name,
                    csgm_steps=stages[0].steps, ilo_steps=stages[1].steps, csgm_lr=CSGM_LR, ilo_lr=cand.ilo_lr,
                    radius_scale=cand.radius_scale,
                    radii="/".join(f"{v:g}" for st in stages[1:] for v in st.radius.values()),
                    image=pid, seed=batch.seeds[b], true_mse=float(m["true_mse"][b]), psnr=float(m["psnr"][b]),
                    ssim=float(m["ssim"][b]), measurement_loss=float(ml[b]), seconds=round(secs, 2),
                    steps_scale=steps_scale, images=where, config=label,
                ) for b, pid in enumerate(batch.ids)]
                append_rows(out_csv, rows)
                means[cand] = float(m["true_mse"].mean())
                log.info("%s phase %d %-18s %6.1fs  mean true MSE %.5f over %d images", task, phase, cand.name,
                         secs, means[cand], len(batch.ids))
        best = min(means, key=means.__getitem__)
        log.info("%s: best %s (mean true MSE %.5f)", task, best.name, means[best])
    return Path(out_csv)


# ------------------------------------------------------------------------------ ILO+ grid
#: The grid point ILO+ is tuned at: the scarcest point of each task inside the quality targets
#: (``None``: the config's own point, the mouth box).
PLUS_LEVELS: Dict[str, Any] = {
    "inpainting_random": 0.05, "inpainting_box": None, "denoising": 100.0, "superres": 8,
    "compressed_sensing": 0.05,
}
#: ST-LPIPS weights (beside MSE weight 1) of phase 1 (``--plus-stlpips``). One weight: an ST-LPIPS
#: solve costs about 4x an MSE one on the CPU, and 0.1 and 0.3 did worse than 0.03 at 8x in a
#: two-image probe.
PLUS_STLPIPS: Tuple[float, ...] = (0.03,)
#: Phase 2 combines options at least this much better (relative) than the config alone, and a
#: pick must beat every simpler candidate by this much (and by one paired standard error).
PLUS_MIN_GAIN = 0.01
#: Phase 3: at most this many further factor-2 steps of a best radius at the grid's edge.
PLUS_EXTEND = 2
#: Radius scales, restarts and kept restarts of phase 1's single-option candidates.
PLUS_RADIUS_SCALES: Tuple[float, ...] = (0.5, 2.0)
PLUS_RESTARTS, PLUS_KEEP = 4, 1
#: Restarts of phase 1's averaging candidate (all run every stage; the image is their mean). Six: on
#: the tuning faces at random 5% and sigma 100 a probe of 6 single starts gave a mean of 4 within
#: 2% (inpainting) and 8% (denoising) of the mean of 6.
PLUS_AVERAGE = 6
#: Phase 4: a pick that averages restarts is tried once with this many times as many.
PLUS_AVERAGE_GROWTH = 2
PLUS_COLUMNS = ["task", "level", "candidate", "phase", "stlpips", "radius_scale", "restarts", "restart_keep",
                "consistency", "steps", "image", "seed", "true_mse", "psnr", "ssim", "stlpips_metric",
                "measurement_loss", "seconds", "images", "config", "restart_average"]


@dataclass(frozen=True)
class PlusCandidate:
    """ILO+ options on top of a task config: ST-LPIPS weight, radius scale, restarts, consistency."""

    stlpips: float = 0.0
    radius_scale: float = 1.0
    restarts: int = 1
    restart_keep: Optional[int] = None
    consistency: str = "none"
    restart_average: int = 1

    @property
    def name(self) -> str:
        parts = []
        if self.stlpips:
            parts.append(f"st{self.stlpips:g}")
        if self.radius_scale != 1.0:
            parts.append(f"r{self.radius_scale:g}")
        if self.restarts > 1:
            parts.append(f"R{self.restarts}K{self.restart_keep or self.restarts}")
        if self.restart_average > 1:
            parts.append(f"A{self.restart_average}")
        if self.consistency != "none":
            parts.append(self.consistency)
        return "+".join(parts) or "ilo"

    def merge(self, other: "PlusCandidate") -> "PlusCandidate":
        """This candidate with ``other``'s non-default options (an average over restarts needs them
        all to the end: it drops a ``restart_keep`` smaller than the average)."""
        average = max(self.restart_average, other.restart_average)
        keep = other.restart_keep or self.restart_keep
        return PlusCandidate(
            stlpips=other.stlpips or self.stlpips,
            radius_scale=other.radius_scale if other.radius_scale != 1.0 else self.radius_scale,
            restarts=max(self.restarts, other.restarts),
            restart_keep=None if keep is not None and keep < average else keep,
            consistency=other.consistency if other.consistency != "none" else self.consistency,
            restart_average=average,
        )


def stlpips_loss_allowed(task: str) -> bool:
    """Whether ST-LPIPS can compare the task's measurements (not compressed-sensing vectors)."""
    return task != "compressed_sensing"


def plus_phase1(task: str, noisy: bool, weights: Sequence[float] = PLUS_STLPIPS) -> List[PlusCandidate]:
    """The config itself, then one ILO+ option at a time (see the module docstring)."""
    out = [PlusCandidate()]
    if stlpips_loss_allowed(task):
        out += [PlusCandidate(stlpips=float(w)) for w in weights]
    out += [PlusCandidate(radius_scale=r) for r in PLUS_RADIUS_SCALES]
    out += [PlusCandidate(restarts=PLUS_RESTARTS, restart_keep=PLUS_KEEP),
            PlusCandidate(restarts=PLUS_AVERAGE, restart_average=PLUS_AVERAGE),
            PlusCandidate(consistency="prox" if noisy else "project")]
    return out


def plus_phase2(means: Dict[PlusCandidate, float]) -> List[PlusCandidate]:
    """Every phase-1 option that beat the config (``ilo``) by :data:`PLUS_MIN_GAIN`, combined
    (the best ST-LPIPS weight and the best radius scale of those; none when fewer than two
    kinds of option did); then, when the mean over restarts gained, the mean crossed with each
    radius scale of :data:`PLUS_RADIUS_SCALES` (a mean favours members of less bias and more
    variance than a single estimate does, so its best radius need not be the single start's).
    Candidates already in ``means`` are left out."""
    base = means[PlusCandidate()]
    better = [c for c, m in means.items() if c != PlusCandidate() and m < base * (1 - PLUS_MIN_GAIN)]
    keep = [c for c in better if not c.stlpips and c.radius_scale == 1.0]
    for kind in ([c for c in better if c.stlpips], [c for c in better if c.radius_scale != 1.0]):
        if kind:
            keep.append(min(kind, key=means.__getitem__))
    out: List[PlusCandidate] = []
    if len(keep) >= 2:
        combo = PlusCandidate()
        for c in keep:
            combo = combo.merge(c)
        out.append(combo)
    averages = [c for c in better if c.restart_average > 1 and c.radius_scale == 1.0 and not c.stlpips]
    for avg in averages[:1]:
        out += [dataclasses.replace(avg, radius_scale=r) for r in PLUS_RADIUS_SCALES]
    return [c for i, c in enumerate(out) if c not in means and c not in out[:i]]


def nested(simple: PlusCandidate, other: PlusCandidate) -> bool:
    """Whether ``simple`` is a simpler candidate than ``other``: not the same, each option either
    unset or ``other``'s, and no more restarts, kept restarts (unset: all) or averaged restarts
    than ``other``."""
    if simple == other:
        return False
    same = all(getattr(simple, f) in (default, getattr(other, f))
               for f, default in (("stlpips", 0.0), ("radius_scale", 1.0), ("consistency", "none")))
    return (same and simple.restarts <= other.restarts
            and (simple.restart_keep or simple.restarts) <= (other.restart_keep or other.restarts)
            and simple.restart_average <= other.restart_average)


def beats(better: Dict[str, float], worse: Dict[str, float], min_gain: float = PLUS_MIN_GAIN) -> bool:
    """Whether per-image true MSEs ``better`` beat ``worse`` on their common images: a mean
    ``min_gain`` lower, and a mean paired difference below minus its standard error (with one
    common image there is no standard error, and the first test alone decides: smoke runs).

    Raises:
        ValueError: when the two share no image.
    """
    common = sorted(set(better) & set(worse))
    if not common:
        raise ValueError("the two candidates share no image: they cannot be compared")
    diff = [better[i] - worse[i] for i in common]
    n = len(diff)
    mean_b, mean_w = sum(better[i] for i in common) / n, sum(worse[i] for i in common) / n
    d = sum(diff) / n
    se = math.sqrt(sum((x - d) ** 2 for x in diff) / (n - 1) / n) if n > 1 else 0.0
    return mean_b < mean_w * (1 - min_gain) and d < -se


def plus_pick(values: Dict[PlusCandidate, Dict[str, float]]) -> PlusCandidate:
    """The ILO+ pick from each candidate's per-image true MSE: the lowest mean among the
    candidates that beat (:func:`beats`) every simpler candidate in ``values`` (:func:`nested`);
    the config alone (``ilo``, which must be there) has none, so it is the fallback."""
    if PlusCandidate() not in values:
        raise ValueError("the ILO+ pick needs the config alone ('ilo') among the candidates")
    justified = [c for c in values
                 if all(beats(values[c], values[p]) for p in values if nested(p, c))]
    return min(justified, key=lambda c: sum(values[c].values()) / len(values[c]))


def more_restarts(pick: PlusCandidate) -> Optional[PlusCandidate]:
    """Phase 4: ``pick`` with :data:`PLUS_AVERAGE_GROWTH` times as many restarts, all averaged,
    when it averages restarts; else ``None``."""
    if pick.restart_average <= 1:
        return None
    k = pick.restart_average * PLUS_AVERAGE_GROWTH
    return dataclasses.replace(pick, restarts=k, restart_average=k, restart_keep=None)


def radius_extension(best: PlusCandidate) -> Optional[PlusCandidate]:
    """``best`` with its radius scale one factor 2 further out, when it is at (or past) an edge of
    :data:`PLUS_RADIUS_SCALES`; else ``None``."""
    lo, hi = min(PLUS_RADIUS_SCALES), max(PLUS_RADIUS_SCALES)
    if best.radius_scale >= hi > 1.0:
        return dataclasses.replace(best, radius_scale=best.radius_scale * 2)
    if best.radius_scale <= lo < 1.0:
        return dataclasses.replace(best, radius_scale=best.radius_scale / 2)
    return None


def plus_plan(cfg: "quality.TaskConfig", cand: PlusCandidate,
              steps_scale: float = 1.0) -> Tuple[List[Stage], Dict[str, Any]]:
    """``(stages, ILOModule kwargs)`` of a candidate: the config's (steps x ``steps_scale``, for
    smoke runs), with the candidate's options."""
    from ilo_pl.losses import MeasurementLoss, STLPIPSLoss

    stages = quality.scaled_stages(cfg.stages, steps_scale, 1.0)
    if cand.radius_scale != 1.0:
        stages = stages[:1] + quality.scaled_stages(stages[1:], 1.0, cand.radius_scale)
    kwargs = dict(cfg.module_kwargs)
    kwargs.update(restarts=cand.restarts, restart_keep=cand.restart_keep, consistency=cand.consistency,
                  restart_average=cand.restart_average)
    if cand.stlpips:
        # AlexNet at 64x64 (the DCGAN's size; super-resolution's observation is brought up to it).
        kwargs["losses"] = {"mse": MeasurementLoss(), "stlpips": STLPIPSLoss(net="alex", resize=64)}
        kwargs["loss_weights"] = {**dict(kwargs.get("loss_weights") or {"mse": 1.0}), "stlpips": cand.stlpips}
    return stages, kwargs


def tune_plus(images: Path, out_csv: Path, tasks: Sequence[str], config_dir: Path = ROOT / "configs",
              seed: int = 0, limit: Optional[int] = None, weights: Sequence[float] = PLUS_STLPIPS,
              steps_scale: float = 1.0) -> Path:
    """Run the ILO+ grid (phases 1 to 4) for every task; rows not yet in ``out_csv`` are appended
    (``steps_scale`` != 1 is for smoke runs: its rows carry ``x<scale>`` in the config column).

    Raises:
        ValueError: for an evaluation folder (:func:`check_tuning_folder`).
    """
    from ilo_pl.metrics import stlpips as stlpips_metric

    check_tuning_folder(images)
    where = display_path(images)
    for task in tasks:
        cfg = quality.load_task_config(task, config_dir)
        label = cfg.label + (f"x{steps_scale:g}" if steps_scale != 1.0 else "")
        level = PLUS_LEVELS[task] if PLUS_LEVELS[task] is not None else cfg.config_level
        gen = build_from_config([cfg.path]).module.generator
        batch = quality.make_problems(cfg, level, images, gen, seed, limit)
        noisy = float(getattr(getattr(batch.operator, "noise_model", None), "sigma", 0.0) or 0.0) > 0
        values: Dict[PlusCandidate, Dict[str, float]] = {}
        lvl = quality.level_label(task, level)

        def means() -> Dict[PlusCandidate, float]:
            return {c: sum(v.values()) / len(v) for c, v in values.items()}

        def run(cand: PlusCandidate, phase: int) -> None:
            """The candidate's per-image true MSE into ``values``: from the CSV's rows, or solved and
            appended."""
            rows = [r for r in read_rows(out_csv)
                    if (r["task"], r["candidate"], r["config"], r["images"], r["level"])
                    == (task, cand.name, label, where, lvl)]
            if {r["image"] for r in rows} >= set(batch.ids):
                values[cand] = {r["image"]: float(r["true_mse"]) for r in rows if r["image"] in set(batch.ids)}
                return
            stages, kwargs = plus_plan(cfg, cand, steps_scale)
            out, secs = quality.solve_batch(gen, batch, stages, kwargs, cfg.trainer_kwargs)
            m = image_metrics(out.float(), batch.target.float())
            st = stlpips_metric(out.float(), batch.target.float())
            with torch.no_grad():
                ml = batch.operator.measurement_error(batch.operator.A(out.float()), batch.observation).float()
            rows = [dict(
                task=task, level=lvl, candidate=cand.name, phase=phase,
                stlpips=cand.stlpips, radius_scale=cand.radius_scale, restarts=cand.restarts,
                restart_keep=cand.restart_keep, consistency=cand.consistency, steps=sum(s.steps for s in stages),
                restart_average=cand.restart_average,
                image=pid, seed=batch.seeds[b], true_mse=float(m["true_mse"][b]), psnr=float(m["psnr"][b]),
                ssim=float(m["ssim"][b]), stlpips_metric=float(st[b]), measurement_loss=float(ml[b]),
                seconds=round(secs, 2), images=where, config=label,
            ) for b, pid in enumerate(batch.ids)]
            append_rows(out_csv, rows, PLUS_COLUMNS)
            values[cand] = {r["image"]: r["true_mse"] for r in rows}
            log.info("%s plus phase %d %-22s %6.1fs  mean true MSE %.5f over %d images", task, phase,
                     cand.name, secs, float(m["true_mse"].mean()), len(batch.ids))

        for cand in plus_phase1(task, noisy, weights):
            run(cand, 1)
        for cand in plus_phase2(means()):
            run(cand, 2)
        # Phase 3: a best radius at the grid's edge is pushed one factor 2 further while that helps.
        for _ in range(PLUS_EXTEND):
            current = means()
            cand = radius_extension(min(current, key=current.__getitem__))
            if cand is None or cand in values:
                break
            run(cand, 3)
        # Phase 4: a pick that averages restarts, with more of them.
        cand = more_restarts(plus_pick(values))
        if cand is not None and cand not in values:
            run(cand, 4)
        best, current = plus_pick(values), means()
        log.info("%s: ILO+ pick %s (mean true MSE %.5f; the config alone %.5f)", task, best.name, current[best],
                 current[PlusCandidate()])
    return Path(out_csv)


def pending_phase4(values: Dict[PlusCandidate, Dict[str, float]],
                   phases: Dict[PlusCandidate, int]) -> Optional[PlusCandidate]:
    """Phase 4's candidate when it has not been run: :func:`more_restarts` of the pick among the
    candidates of phases 1-3; else ``None`` (run, or the pick does not average restarts)."""
    early = {c: v for c, v in values.items() if phases[c] < 4}
    if PlusCandidate() not in early:
        return None
    grow = more_restarts(plus_pick(early))
    return grow if grow is not None and grow not in values else None


def candidate_from_row(row: Dict[str, str]) -> PlusCandidate:
    """The candidate a ``tuning_plus.csv`` row was made with."""
    return PlusCandidate(stlpips=float(row["stlpips"] or 0), radius_scale=float(row["radius_scale"] or 1),
                         restarts=int(row["restarts"] or 1),
                         restart_keep=int(row["restart_keep"]) if row["restart_keep"] else None,
                         consistency=row["consistency"] or "none",
                         restart_average=int(row.get("restart_average") or 1))


def plus_report(rows: Sequence[Dict[str, str]]) -> str:
    """Markdown: per task, every ILO+ candidate's mean true MSE (± s.e.), PSNR and ST-LPIPS, best first."""
    lines = ["ILO+ grid of `benchmarks/tune.py --plus`: mean true MSE ([-1, 1] scale, ± standard error over "
             "images), PSNR (dB) and ST-LPIPS (AlexNet) per candidate, best first. `ilo` is the task's config "
             "alone; `st<w>` adds an ST-LPIPS term of weight w, `r<s>` scales the ILO stages' radii by s, "
             f"`R{PLUS_RESTARTS}K{PLUS_KEEP}` runs {PLUS_RESTARTS} restarts (the best {PLUS_KEEP} kept after "
             f"CSGM), `R{PLUS_AVERAGE}K{PLUS_AVERAGE}+A{PLUS_AVERAGE}` runs {PLUS_AVERAGE} restarts through every "
             "stage and returns their mean image (`restart_average`), "
             "`project`/`prox` adds the final consistency step; `+` combines (phase 2); phase 3 pushes a "
             "best radius at the grid's edge further. `steps` are the schedule's steps per problem: restarts "
             "run the CSGM stage on every start (R4K1 with 100 CSGM steps: 700 latent-steps instead of 400), "
             f"and a mean runs every stage on all of them (R{PLUS_AVERAGE}K{PLUS_AVERAGE}+A{PLUS_AVERAGE}: "
             f"{PLUS_AVERAGE}x the steps). "
             f"Phase 4 doubles the restarts of a pick that averages them (R{2 * PLUS_AVERAGE}K{2 * PLUS_AVERAGE}"
             f"+A{2 * PLUS_AVERAGE}). "
             "The config's fingerprint is the quality benchmark's (`benchmarks/quality.py`). **Bold**: the "
             "pick (`configs/plus/<task>.yaml`): the best candidate that beats every simpler candidate run (each "
             f"option unset or the same, no more restarts) by {PLUS_MIN_GAIN:.0%} and by a mean paired per-image "
             "difference beyond its standard error; `ilo` when none does. A note under a table says when the "
             "pick's phase-4 candidate has not been run.", ""]
    groups: Dict[Tuple[str, str, str, str], Dict[str, List[Dict[str, str]]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["level"], r["config"], r["images"]), {}).setdefault(r["candidate"], []).append(r)
    order = list(quality.TASKS)
    for (task, level, cfg, images), cands in sorted(groups.items(), key=lambda kv: order.index(kv[0][0])):
        lines += [f"### {task} ({level}; {cfg}; {images})", "",
                  "| candidate | phase | true MSE | vs ilo | PSNR | ST-LPIPS | steps | images |",
                  "|---|---|---|---|---|---|---|---|"]
        values = {candidate_from_row(rs[0]): {r["image"]: float(r["true_mse"]) for r in rs}
                  for rs in cands.values()}
        stats = []
        for name, rs in cands.items():
            rs = list({r["image"]: r for r in rs}.values())  # one row per image, as in `values`
            v = [float(r["true_mse"]) for r in rs]
            n, mean = len(v), sum(v) / len(v)
            sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0
            stats.append((mean, name, rs[0]["phase"], sd / math.sqrt(n), sum(float(r["psnr"]) for r in rs) / n,
                          sum(float(r["stlpips_metric"]) for r in rs) / n, rs[0]["steps"], n))
        stats.sort()
        base = next((s[0] for s in stats if s[1] == "ilo"), float("nan"))
        best = plus_pick(values) if PlusCandidate() in values else None
        pick = best.name if best is not None else None
        for mean, name, phase, sem, psnr, st, steps, n in stats:
            shown = f"**{name}**" if name == pick else name
            lines.append(f"| {shown} | {phase} | {mean:.5f} ± {sem:.5f} | {mean / base:.2f}x | {psnr:.2f} | "
                         f"{st:.4f} | {steps} | {n} |")
        phases = {candidate_from_row(rs[0]): int(rs[0]["phase"]) for rs in cands.values()}
        grow = pending_phase4(values, phases)
        if grow is not None:
            lines += ["", f"Phase 4 ({grow.name}) not run yet: the pick is the best of the candidates that ran."]
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=TUNE_IMAGES, help="tuning images (default faces/tune)")
    p.add_argument("--tasks", nargs="+", default=["all"], help="tasks (as quality.py's --tasks; default all)")
    p.add_argument("--grid", choices=("full", "smoke"), default="full", help="the grid (smoke: 2 candidates)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--csv", default=None, help="CSV file name inside --out (default tuning.csv; tuning_plus.csv with --plus)")
    p.add_argument("--plus", action="store_true", help="the ILO+ grid (module docstring) instead of the schedule grid")
    p.add_argument("--plus-stlpips", type=float, nargs="+", default=list(PLUS_STLPIPS),
                   help="ST-LPIPS weights of the ILO+ grid's phase 1")
    p.add_argument("--configs", type=Path, default=ROOT / "configs", help="folder of the task configs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's steps (smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true", help="only rebuild the ranking from the CSV")
    ns = p.parse_args(argv)

    quiet_run_setup(ns.threads)
    out_csv = ns.out / (ns.csv or ("tuning_plus.csv" if ns.plus else "tuning.csv"))
    if (ns.steps_scale != 1.0 or ns.grid == "smoke" or ns.limit) and ns.out == p.get_default("out"):
        p.error("--steps-scale, --grid smoke and --limit are for smoke runs: pass --out elsewhere")
    if ns.plus and ns.grid == "smoke":
        p.error("--grid is the schedule grid's; a smoke run of --plus is --steps-scale/--limit with --out elsewhere")
    if ns.plus and not ns.report_only:
        t0 = time.perf_counter()
        tune_plus(ns.images, out_csv, quality.expand_tasks(ns.tasks), ns.configs, ns.seed, ns.limit,
                  ns.plus_stlpips, ns.steps_scale)
        log.info("done in %.1f min", (time.perf_counter() - t0) / 60)
    elif not ns.report_only:
        grid = SMOKE_GRID if ns.grid == "smoke" else GRID
        t0 = time.perf_counter()
        tune(ns.images, out_csv, quality.expand_tasks(ns.tasks), grid, ns.configs, ns.seed, ns.limit, ns.steps_scale)
        log.info("done in %.1f min", (time.perf_counter() - t0) / 60)
    rows = read_rows(out_csv)
    if not rows:
        raise SystemExit(f"no tuning rows in {out_csv}")
    text = plus_report(rows) if ns.plus else report(rows)
    table = out_csv.with_name(out_csv.stem + "_table.md")
    table.write_text(text + "\n")
    print(text)
    log.info("wrote %s", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
