"""Stochastic Noise Addition: the paper's Table 1 analogue on real faces.

Denoising at each sigma (0..255 scale) on every image of a folder, with CSGM
and ILO, each with and without SNA, at equal total steps. The config
(``configs/denoising.yaml``) is read by the command line's parser
(``ilo_pl.config.build_from_config``), so every module option reaches the
solves, and the problems (noise draws per problem seed) are those its data
module makes for the folder, as in ``ilo-pl fit`` and :mod:`benchmarks.quality`:

* ILO + SNA: the config as it is (SNA in the stages it runs in, ``sna_samples`` draws);
* ILO: the same schedule with SNA off in every stage;
* CSGM (+ SNA): the config's total steps in one split-0 stage (its first stage's
  ``lr``, ``free`` and ``radius``), the config's module options otherwise
  (``sphere`` included), SNA off (on) in that stage;
* ILO + SNA, 1 draw (``ILO_1draw``): the config with ``sna_samples: 1``, the paper's SNA.

Rows go to ``--out`` (default ``benchmarks/results/sna.csv``) one per (sigma,
method, SNA, image), merged into what the CSV already holds: a re-run replaces
the rows of the sigmas it runs (saying so) and keeps every other row, so the
table of each sigma stays backed by its rows. ``--report`` prints the markdown
table of every sigma in the CSV.

    python -m benchmarks.sna --threads 1                       # sigma 50 and 100
    python -m benchmarks.sna --sigma 100 --threads 1           # one sigma, the others kept
    python -m benchmarks.sna --report                          # the table from the CSV
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.sna`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import csv
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks.common import RESULTS, ROOT, SHARED, display_path, read_rows, silence_lightning
from benchmarks.quality import FINGERPRINT_EXCLUDE
from ilo_pl.api import solve
from ilo_pl.config import build_from_config
from ilo_pl.metrics import image_metrics
from ilo_pl.stages import Stage

COLUMNS = ["sigma", "method", "sna", "id", "psnr", "true_mse", "measurement_loss", "steps", "seconds", "seed",
           "images", "config"]
#: Methods in table order: (method, SNA). ``ILO_1draw`` is ILO + SNA with the paper's single draw.
ORDER: Tuple[Tuple[str, bool], ...] = (("CSGM", False), ("CSGM", True), ("ILO", False), ("ILO", True),
                                       ("ILO_1draw", True))
#: Table headers of :data:`ORDER`.
HEADERS = ("CSGM", "CSGM + SNA", "ILO", "ILO + SNA", "ILO + SNA, 1 draw")


def row_key(row: Dict[str, Any]) -> Tuple[float, str, bool, str]:
    """The identity of a row: ``(sigma, method, sna, image id)``."""
    return float(row["sigma"]), str(row["method"]), str(row["sna"]) == "True", str(row["id"])


def merge_rows(old: Sequence[Dict[str, Any]], new: Sequence[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], int]:
    """``old`` with every row of the same key as a row of ``new`` replaced by it; and how many were replaced.

    Rows of keys ``new`` does not have (other sigmas, other images) are kept as they are.
    """
    fresh = {row_key(r): r for r in new}
    kept = [r for r in old if row_key(r) not in fresh]
    return kept + list(new), len(old) - len(kept)


def write_rows(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    """Write ``rows`` (sorted by sigma, method, SNA, image) atomically: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = {m: i for i, m in enumerate(ORDER)}
    rows = sorted(rows, key=lambda r: (float(r["sigma"]), order.get((r["method"], str(r["sna"]) == "True"), 9),
                                       str(r["id"])))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    os.replace(tmp, path)


def table(rows: Sequence[Dict[str, str]]) -> str:
    """The markdown table: per sigma, mean PSNR (true MSE) of each method over the images; best PSNR in bold.

    A sigma whose methods do not cover the same images, or whose rows come
    from more than one config, is marked rather than averaged silently.
    """
    head = "| sigma | " + " | ".join(HEADERS) + " |\n|" + " --- |" * (len(HEADERS) + 1)
    lines = [head]
    for sigma in sorted({float(r["sigma"]) for r in rows}):
        cells: List[Tuple[float, float]] = []
        ids = []
        for method, sna in ORDER:
            sel = [r for r in rows if float(r["sigma"]) == sigma and r["method"] == method
                   and (str(r["sna"]) == "True") == sna]
            ids.append(sorted(r["id"] for r in sel))
            if not sel:
                cells.append((float("nan"), float("nan")))
                continue
            cells.append((sum(float(r["psnr"]) for r in sel) / len(sel),
                          sum(float(r["true_mse"]) for r in sel) / len(sel)))
        best = max(range(len(cells)), key=lambda i: cells[i][0] if cells[i][0] == cells[i][0] else -1e9)
        text = [f"**{p:.2f}** ({m:.4f})" if i == best else f"{p:.2f} ({m:.4f})" for i, (p, m) in enumerate(cells)]
        configs = {r.get("config", "") for r in rows if float(r["sigma"]) == sigma}
        note = ""
        if any(i != ids[0] for i in ids):
            note = " (methods cover different images)"
        if len(configs) > 1:
            note += f" (rows of {len(configs)} configs)"
        lines.append(f"| {sigma:g}{note} | " + " | ".join(text) + " |")
    n = len({r["id"] for r in rows})
    return "\n".join(lines) + f"\n\nMean PSNR in dB (true MSE on the [-1, 1] scale) over {n} images.\n"


def plans(built: Any) -> List[Tuple[str, bool, List[Stage], Dict[str, Any]]]:
    """``(method, sna, stages, module kwargs)`` of the solves of one config, in :data:`ORDER`."""
    kwargs = {k: v for k, v in built.module_kwargs.items() if k not in ("generator", "stages")}
    ilo = list(built.module.stages)
    total = sum(s.steps for s in ilo)
    first = ilo[0]
    csgm = [Stage(split=first.split, steps=total, lr=first.lr, free=list(first.free), radius=dict(first.radius),
                  loss_weights=first.loss_weights)]
    no_sna = [dataclasses.replace(s, sna=None) for s in ilo]
    return [
        ("CSGM", False, csgm, {**kwargs, "sna": False}),
        ("CSGM", True, csgm, {**kwargs, "sna": True}),
        ("ILO", False, no_sna, {**kwargs, "sna": False}),
        ("ILO", True, ilo, dict(kwargs)),
        ("ILO_1draw", True, ilo, {**kwargs, "sna_samples": 1}),
    ]


def run_sigma(config: Path, images: Path, sigma: float, seed: int, limit: Optional[int] = None,
              steps_scale: float = 1.0) -> List[Dict[str, Any]]:
    """The solves of :func:`plans` at one sigma; one row per (method, SNA, image)."""
    built = build_from_config([config], {"data": {"data": str(images), "seed": seed, "limit": limit,
                                                  "operator": {"init_args": {"sigma": float(sigma)}}}})
    exclude = FINGERPRINT_EXCLUDE + ("data.operator.init_args.sigma",)  # what this benchmark sets
    label = f"{config.name}@{built.fingerprint(exclude=exclude)}"
    dm = built.datamodule
    dm.bind(built.module.generator)
    batch = dm.make_batch(dm.problem_indices())
    gen = built.module.generator
    rows: List[Dict[str, Any]] = []
    sna_stages = [i for i, s in enumerate(built.module.stages) if s.sna is not False]
    print(f"denoising sigma={sigma:g} on {len(batch.ids)} images of {images}; config {label}; "
          f"SNA: mean of {built.module_kwargs['sna_samples']} draws, ILO stages {sna_stages}", flush=True)
    print(f"{'method':<6} {'SNA':<4} {'PSNR dB':>8} {'true MSE':>9} {'seconds':>8}", flush=True)
    for method, sna, stages, kwargs in plans(built):
        if steps_scale != 1.0:
            stages = [dataclasses.replace(s, steps=max(1, round(s.steps * steps_scale))) for s in stages]
        t = time.perf_counter()
        res = solve(gen, batch.operator, batch.observation, stages, target=batch.target, seeds=batch.seeds,
                    ids=batch.ids, trainer_kwargs=dict(built.trainer_kwargs), **kwargs)
        dt = time.perf_counter() - t
        m = image_metrics(res.images, batch.target)
        for b, pid in enumerate(batch.ids):
            rows.append({"sigma": float(sigma), "method": method, "sna": sna, "id": pid,
                         "psnr": float(m["psnr"][b]), "true_mse": float(m["true_mse"][b]),
                         "measurement_loss": float(res.measurement_loss[b]), "steps": sum(s.steps for s in stages),
                         "seconds": round(dt, 2), "seed": batch.seeds[b], "images": display_path(images),
                         "config": label})
        print(f"{method:<6} {'on' if sna else 'off':<4} {m['psnr'].mean():8.2f} {m['true_mse'].mean():9.4f} {dt:8.1f}",
              flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=SHARED / "benchmark" / "faces" / "64")
    p.add_argument("--sigma", type=float, nargs="+", default=[50.0, 100.0], help="noise levels (default 50 100)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "denoising.yaml")
    p.add_argument("--seed", type=int, default=0, help="the run seed (problem i uses problem_seed(seed, i))")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's steps (smoke runs)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS / "sna.csv")
    p.add_argument("--report", action="store_true", help="only print the table of the CSV")
    args = p.parse_args(argv)

    if args.report:
        print(table(read_rows(args.out)))
        return 0
    if args.steps_scale != 1.0 and args.out == p.get_default("out"):
        p.error("--steps-scale is for smoke runs: pass --out elsewhere, the table's rows are kept")
    silence_lightning(args.threads)
    for sigma in args.sigma:
        new = run_sigma(args.config, args.images, sigma, args.seed, args.limit, args.steps_scale)
        merged, replaced = merge_rows(read_rows(args.out), new)
        write_rows(args.out, merged)
        print(f"{len(new)} rows of sigma {sigma:g} written to {args.out}"
              + (f" (replacing {replaced} earlier rows of the same sigma, method and image)" if replaced else "")
              + f"; it holds {len(merged)} rows", flush=True)
    print(table(read_rows(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
