"""Issue-2 acceptance check: ILO vs CSGM on the benchmark faces with a box over the mouth.

Runs the stage schedule of ``configs/inpainting_box.yaml`` (ILO) and CSGM with
the same total steps (one split-0 stage), on every face of a folder, and
prints the mean true MSE ([-1, 1] scale) of each and their ratio.

    python benchmarks/mouth_box.py --images ../shared/benchmark/faces/64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ilo_pl.api import solve  # noqa: E402
from ilo_pl.data import ImageFolder, problem_seed  # noqa: E402
from ilo_pl.metrics import image_metrics  # noqa: E402
from ilo_pl.modules.generators import DCGANGenerator  # noqa: E402
from ilo_pl.operators import BoxMask  # noqa: E402
from ilo_pl.stages import Stage  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(ROOT.parent / "shared" / "benchmark" / "faces" / "64"))
    p.add_argument("--config", default=str(ROOT / "configs" / "inpainting_box.yaml"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(open(args.config))
    ilo = [Stage(**s) for s in cfg["model"]["stages"]]
    csgm = [Stage(split=0, steps=sum(s.steps for s in ilo), lr=ilo[0].lr, free=list(ilo[0].free))]
    G = DCGANGenerator()
    src = ImageFolder(args.images)
    x = torch.stack([src.load(i, G.image_shape, 0) for i in range(len(src))])
    op = BoxMask(cfg["data"]["operator"]["init_args"]["box"]).build(G.image_shape, 0)
    y = op(x)
    seeds = [problem_seed(0, i) for i in range(len(src))]
    out = {}
    for name, stages in (("CSGM", csgm), ("ILO", ilo)):
        res = solve(G, op, y, stages, target=x, seeds=seeds, **{k: v for k, v in cfg["model"].items() if k in ("sna", "sphere")})
        m = image_metrics(res.images, x)
        out[name] = m["true_mse"]
        print(f"{name:<5} mean true MSE {m['true_mse'].mean():.5f}  PSNR {m['psnr'].mean():.2f} dB  per image "
              + " ".join(f"{v:.4f}" for v in m["true_mse"].tolist()), flush=True)
    ratio = (out["ILO"].mean() / out["CSGM"].mean()).item()
    print(f"ILO / CSGM mean true MSE = {ratio:.3f} over {len(src)} faces ({sum(s.steps for s in ilo)} steps each)")


if __name__ == "__main__":
    main()
