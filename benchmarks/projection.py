"""Benchmark: exact l1-ball projection, sort-based (Duchi et al. 2008) vs ilo-pl's (Michelot).

Usage::

    python -m benchmarks.projection [--quick] [--csv out.csv] [--repeats N]

Prints, for each device (CPU, and CUDA when available), tensor size per sample,
batch size and radius, the median time of each method over the repeats (ms; the methods alternate
repeat by repeat so that all see the same machine load): sort-based, ilo-pl's
``project_l1_ball`` (a cold start), and ilo-pl's in-place ``project_l1_ball_``
as the engine calls it every step (an ``L1Workspace`` carried across calls,
after a small random step of the variable, whose add is timed too),
the speed-up measured in the same run, and the largest deviation between the
two results relative to the largest entry. On the CPU the in-place call
(``impl="auto"``) runs the compiled kernel (:mod:`ilo_pl.ops._cpu`);
``native_warm_ms`` times the same call with ``impl="newton"``, the pure-PyTorch
path (what runs where the kernel cannot be built), and ``kernel_vs_native`` is
their ratio. PyTorch's default thread count is
used (not changed here). On an oversubscribed CPU (more busy processes than
cores), OpenMP's default spin-waiting makes every parallel op stall; run with
``OMP_WAIT_POLICY=passive`` there (see docs/projections.md).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.projection`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import csv
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from ilo_pl.projections import L1Workspace, project_l1_ball, project_l1_ball_, project_l1_ball_sort

SIZES = [8 << 10, 32 << 10, 64 << 10, 128 << 10, 512 << 10, 2 << 20]
QUICK_SIZES = [8 << 10, 64 << 10, 512 << 10]
BATCHED_UP_TO = 128 << 10  # batch 16 is also timed for sizes up to this
FRACTIONS = [0.01, 0.3]  # radius as a fraction of each row's l1 norm


def _time_pair_ms(
    fns: List[Callable[[], torch.Tensor]], repeats: int, device: torch.device
) -> List[float]:
    """Median wall time (ms) of each of ``fns``, interleaved so both see the same machine load."""
    for fn in fns:  # warm-up
        fn()
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            acc.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


#: The header of the printed table (``run`` prints one line per configuration under it).
HEADER = (
    f"{'dev':>5} {'n':>5} {'batch':>5} {'r/|v|':>6} {'sort ms':>10} {'ilo ms':>10} {'speedup':>9} "
    f"{'warm ms':>10} {'speedup':>9} {'native ms':>10} {'kern/nat':>9} {'noread ms':>10} {'rel err':>9}"
)


def _label(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}k"


def run(sizes: List[int], repeats: int, devices: List[torch.device]) -> List[Dict[str, object]]:
    """Time both methods on Gaussian rows (float32) for every configuration."""
    rows: List[Dict[str, object]] = []
    gen = torch.Generator().manual_seed(0)
    for device in devices:
        for n in sizes:
            for batch in [1, 16] if n <= BATCHED_UP_TO else [1]:
                v = torch.randn(batch, n, generator=gen).to(device)
                norms = v.abs().sum(1)
                for frac in FRACTIONS:
                    r = norms * frac
                    # As the engine runs it: in place around an anchor, with a workspace carried
                    # from call to call, after a small random step (one add, timed too).
                    anchor = torch.zeros_like(v)
                    param = project_l1_ball(v, r)
                    ws = L1Workspace()
                    step = 1e-3 * v.abs().mean() * torch.randn(v.shape, generator=gen).to(device)

                    def warm() -> None:
                        param.add_(step)
                        project_l1_ball_(param, anchor, r, ws)

                    param_n, ws_n = param.clone(), L1Workspace()

                    def native_warm() -> None:  # the pure-PyTorch search (no compiled kernel)
                        param_n.add_(step)
                        project_l1_ball_(param_n, anchor, r, ws_n, impl="newton")

                    param_r, ws_r = param.clone(), L1Workspace(host_reads=False)

                    def no_reads_warm() -> None:  # what the engine runs on accelerators
                        param_r.add_(step)
                        project_l1_ball_(param_r, anchor, r, ws_r)

                    t_sort, t_fast, t_warm, t_native, t_noread = _time_pair_ms(
                        [lambda: project_l1_ball_sort(v, r), lambda: project_l1_ball(v, r), warm, native_warm,
                         no_reads_warm],
                        repeats,
                        device,
                    )
                    ref = project_l1_ball_sort(v.double(), r.double())
                    err = float(((project_l1_ball(v, r).double() - ref).abs().max() / ref.abs().max()).item())
                    rows.append(
                        dict(
                            device=device.type,
                            n=n,
                            size=_label(n),
                            batch=batch,
                            radius_frac=frac,
                            sort_ms=round(t_sort, 3),
                            ilo_ms=round(t_fast, 3),
                            speedup=round(t_sort / t_fast, 2),
                            inplace_warm_ms=round(t_warm, 3),
                            speedup_warm=round(t_sort / t_warm, 2),
                            native_warm_ms=round(t_native, 3),
                            kernel_vs_native=round(t_native / t_warm, 2),
                            no_reads_warm_ms=round(t_noread, 3),
                            max_rel_err=f"{err:.1e}",
                        )
                    )
                    r_ = rows[-1]
                    print(
                        f"{r_['device']:>5} {r_['size']:>5} {batch:>5} {frac:>6} "
                        f"{t_sort:>10.2f} {t_fast:>10.2f} {t_sort / t_fast:>8.1f}x {t_warm:>10.2f} "
                        f"{t_sort / t_warm:>8.1f}x {t_native:>10.2f} {t_native / t_warm:>8.1f}x {t_noread:>10.2f} "
                        f"{r_['max_rel_err']:>9}",
                        flush=True,
                    )
    return rows


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 sizes and 3 repeats (a smoke run)")
    parser.add_argument("--csv", type=Path, default=None, help="write the table to this CSV file")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 15, quick 3)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    repeats = args.repeats or (3 if args.quick else 15)
    sizes = QUICK_SIZES if args.quick else SIZES
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, OMP_WAIT_POLICY={wait}, "
        f"float32, median of {repeats}"
    )
    print(HEADER)
    rows = run(sizes, repeats, devices)
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
