"""Benchmark: an ILO solve step on NVIDIA's StyleGAN2-ADA and StyleGAN3-T against the rosinality StyleGAN-2 (CPU).

Usage (from the repository root)::

    python -m benchmarks.nvlabs_speed [--steps N] [--warmup N] [--repeats N] [--batch B]
                                      [--threads N] [--out benchmarks/results/nvlabs_speed.csv]

The generators are the 32x32 fixtures of ``../shared/fixtures``: the rosinality
port's ``stylegan2_rosinality_tiny.pt`` and NVIDIA's ``nvlabs/stylegan2ada_tiny_shared.pkl``
and ``nvlabs/stylegan3t_tiny.pkl`` (all loaded through
:func:`ilo_pl.modules.generators.load_generator`). Every generator
runs each modulated-convolution form (``modconv_impl``). A *solve step* is
what ILO does per optimizer step, without Lightning: ``G2`` from the state at a
split (every entry of groups ``latent``, ``state``, ``noise`` free), an MSE
against a fixed target, backward, and an Adam step. It is timed at the splits
of the paper's schedule (0, 1, 3, 5), in CPU time (``time.process_time``) on
``--threads`` threads (default 1); the median over ``--repeats`` rounds of
``--steps`` steps each (after ``--warmup``) is reported per step, in ms, for
each modulated-convolution form (``auto`` resolves to ``fused`` at batch 1).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.nvlabs_speed`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
GENERATORS = {
    "rosinality": FIXTURES / "stylegan2_rosinality_tiny.pt",
    "stylegan2ada": FIXTURES / "nvlabs" / "stylegan2ada_tiny_shared.pkl",
    "stylegan3t": FIXTURES / "nvlabs" / "stylegan3t_tiny.pkl",
}


def time_steps(gen: torch.nn.Module, split: int, batch: int, steps: int, warmup: int) -> float:
    """CPU seconds per solve step at ``split`` (median of nothing: one round)."""
    state0 = gen.init_variables(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        state = gen.advance(state0, 0, split)
        target = gen.render(gen.advance(gen.init_variables(batch, torch.Generator().manual_seed(1)), 0, split), split)
    groups = gen.groups(split)
    free = {n: t.clone().requires_grad_(groups[n] in ("latent", "state", "noise")) for n, t in state.items()}
    opt = torch.optim.Adam([t for t in free.values() if t.requires_grad], lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = (gen.render(free, split) - target).pow(2).mean()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - t0) / steps


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--splits", type=int, nargs="+", default=[0, 1, 3, 5])
    p.add_argument("--impls", nargs="+", default=["fused", "unfused"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ilo_pl.modules.generators import load_generator

    gens = {name: load_generator(path) for name, path in GENERATORS.items()}
    rows: List[Dict[str, object]] = []
    for impl in args.impls:
        for g in gens.values():
            if hasattr(g, "modconv_impl"):
                g.modconv_impl = impl
        for split in args.splits:
            times: Dict[str, List[float]] = {name: [] for name in gens}
            for _ in range(args.repeats):  # rounds interleaved across generators
                for name, g in gens.items():
                    times[name].append(time_steps(g, split, args.batch, args.steps, args.warmup))
            med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
            row: Dict[str, object] = {"impl": impl, "split": split, "batch": args.batch, "threads": args.threads}
            row.update({f"{name}_ms": round(ms, 3) for name, ms in med.items()})
            row.update({f"{name}_ratio": round(ms / med["rosinality"], 3) for name, ms in med.items() if name != "rosinality"})
            rows.append(row)
            print(row, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
