"""Stochastic Noise Addition: the paper's Table 1 analogue on real faces.

Denoising at sigma (0..255 scale) on every image of a folder, with CSGM and
ILO, each with and without SNA, at equal total steps. Stage schedules, the
stages SNA runs in and ``sna_samples`` come from ``configs/denoising.yaml``
(ILO; without SNA every stage runs without it) and its total steps in one
split-0 stage (CSGM, SNA in its one stage). Prints a table of mean PSNR / true
MSE and writes a CSV.

    python benchmarks/sna.py --images ../shared/benchmark/faces/64 --sigma 50
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ilo_pl.api import solve  # noqa: E402
from ilo_pl.data import ImageFolder, problem_seed  # noqa: E402
from ilo_pl.metrics import image_metrics  # noqa: E402
from ilo_pl.modules.generators import DCGANGenerator  # noqa: E402
from ilo_pl.operators import GaussianNoise  # noqa: E402
from ilo_pl.stages import Stage  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(ROOT.parent / "shared" / "benchmark" / "faces" / "64"))
    p.add_argument("--sigma", type=float, default=50.0)
    p.add_argument("--config", default=str(ROOT / "configs" / "denoising.yaml"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sna.csv"))
    args = p.parse_args()

    if args.threads > 0:  # 1 avoids OpenMP oversubscription on a shared machine
        torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(open(args.config))["model"]
    ilo = [Stage(**s) for s in cfg["stages"]]
    total = sum(s.steps for s in ilo)
    csgm = [Stage(split=0, steps=total, lr=ilo[0].lr, free=list(ilo[0].free), radius=dict(ilo[0].radius))]

    G = DCGANGenerator()
    src = ImageFolder(args.images)
    x = torch.stack([src.load(i, G.image_shape, 0) for i in range(len(src))])
    op = GaussianNoise(args.sigma)
    y = op(x, torch.Generator().manual_seed(args.seed))
    seeds = [problem_seed(args.seed, i) for i in range(len(src))]
    ids = [src.name(i) for i in range(len(src))]

    rows = []
    print(f"denoising sigma={args.sigma:g} on {len(src)} images of {args.images}; {total} steps per method; "
          f"SNA: mean of {cfg.get('sna_samples', 16)} draws, in ILO stages {[i for i, s in enumerate(ilo) if s.sna is not False]}")
    print(f"{'method':<6} {'SNA':<4} {'PSNR dB':>8} {'true MSE':>9} {'seconds':>8}")
    for method, stages in (("CSGM", csgm), ("ILO", ilo)):
        for sna in (False, True):
            t = time.perf_counter()
            run = stages if sna else [Stage(**{**s.__dict__, "sna": None}) for s in stages]
            res = solve(G, op, y, run, target=x, seeds=seeds, ids=ids, sna=sna,
                        sna_samples=cfg.get("sna_samples", 16), sphere=cfg.get("sphere", False))
            dt = time.perf_counter() - t
            m = image_metrics(res.images, x)
            for b, pid in enumerate(ids):
                rows.append({"method": method, "sna": sna, "sigma": args.sigma, "id": pid,
                             "psnr": float(m["psnr"][b]), "true_mse": float(m["true_mse"][b])})
            print(f"{method:<6} {'on' if sna else 'off':<4} {m['psnr'].mean():8.2f} {m['true_mse'].mean():9.4f} {dt:8.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"rows written to {out}")


if __name__ == "__main__":
    main()
