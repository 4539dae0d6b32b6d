"""How much the floor step's own time depends on where its tensors land in memory.

Usage::

    python -m benchmarks.floor_placement [--split 4] [--batch 16] [--loops 8] [--steps 100]

Builds ``--loops`` fresh floor loops (:class:`benchmarks.timing.FloorStep`:
the DCGAN's G2 forward, loss, backward and Adam step, nothing else) one after
the other on the same problem, and prints each loop's median step time (CPU
time, one thread) with the address offsets (mod 4 KiB) of its variable and
Adam's two moment buffers. Nothing but the allocations differs between loops,
so the spread is what memory placement alone does to a step (cache-set
conflicts between the state-sized arrays Adam streams through); it bounds how
precisely one run's ILO/floor ratio can be read at that configuration.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.floor_placement`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import statistics
import time
from typing import List, Optional

import torch

from benchmarks import timing


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--loops", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    if min(args.batch, args.loops, args.steps) < 1 or args.split < 0:
        parser.error("--batch, --loops and --steps must be >= 1 and --split >= 0")
    torch.set_num_threads(1)
    gen = timing.make_generator("dcgan")
    op, y = timing.make_problem(gen, args.batch)
    state = gen.init_variables(args.batch, torch.Generator().manual_seed(0))
    state = gen.advance(state, 0, args.split) if args.split else state
    medians = []
    print(f"DCGAN split {args.split}, batch {args.batch}: {args.loops} fresh floor loops of {args.steps} steps")
    for k in range(args.loops):
        floor = timing.FloorStep(gen, state, set(state), args.split, op, y, 0.05)
        times = []
        for _ in range(args.steps):
            t0 = time.process_time()
            floor()
            times.append(time.process_time() - t0)
        med = statistics.median(times[5:] or times) * 1e3
        medians.append(med)
        param = max(floor.params.values(), key=lambda p: p.numel())
        moments = [v for v in floor.opt.state[param].values() if torch.is_tensor(v) and v.numel() > 1]
        offsets = [hex(t.data_ptr() % 4096) for t in [param, *moments]]
        print(f"  loop {k}: {med:8.3f} ms/step   offsets (variable, exp_avg, exp_avg_sq) {offsets}", flush=True)
    lo, hi = min(medians), max(medians)
    print(f"median {statistics.median(medians):.3f} ms, min {lo:.3f}, max {hi:.3f} (max/min {hi / lo:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
