"""Issue-2 acceptance check: ILO vs CSGM on the benchmark faces with a box over the mouth.

Runs ``configs/inpainting_box.yaml`` (ILO) and CSGM with the same total steps
(one split-0 stage, the config's other module options), on every face of a
folder, and prints the mean true MSE ([-1, 1] scale) of each and their ratio.
The config is read by the command line's parser
(``ilo_pl.config.build_from_config``): every module option reaches the solves
and the problems are those its data module makes for the folder.

    python -m benchmarks.mouth_box --images ../shared/benchmark/faces/64
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.mouth_box`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
from typing import List, Optional

from benchmarks.common import ROOT, SHARED, silence_lightning
from ilo_pl.api import solve
from ilo_pl.config import build_from_config
from ilo_pl.metrics import image_metrics
from ilo_pl.stages import Stage


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(SHARED / "benchmark" / "faces" / "64"))
    p.add_argument("--config", default=str(ROOT / "configs" / "inpainting_box.yaml"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    silence_lightning(args.threads)
    built = build_from_config([args.config], {"data": {"data": args.images, "limit": None}})
    kwargs = {k: v for k, v in built.module_kwargs.items() if k not in ("generator", "stages")}
    ilo = list(built.module.stages)
    first = ilo[0]
    csgm = [Stage(split=first.split, steps=sum(s.steps for s in ilo), lr=first.lr, free=list(first.free),
                  radius=dict(first.radius))]
    G = built.module.generator
    dm = built.datamodule
    dm.bind(G)
    batch = dm.make_batch(dm.problem_indices())
    out = {}
    for name, stages in (("CSGM", csgm), ("ILO", ilo)):
        res = solve(G, batch.operator, batch.observation, stages, target=batch.target, seeds=batch.seeds,
                    ids=batch.ids, trainer_kwargs=dict(built.trainer_kwargs), **kwargs)
        m = image_metrics(res.images, batch.target)
        out[name] = m["true_mse"]
        print(f"{name:<5} mean true MSE {m['true_mse'].mean():.5f}  PSNR {m['psnr'].mean():.2f} dB  per image "
              + " ".join(f"{v:.4f}" for v in m["true_mse"].tolist()), flush=True)
    ratio = (out["ILO"].mean() / out["CSGM"].mean()).item()
    print(f"ILO / CSGM mean true MSE = {ratio:.3f} over {len(batch.ids)} faces "
          f"({sum(s.steps for s in ilo)} steps each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
