"""Diagnostic: how many PyTorch operators one ILO step dispatches, against the floor, and from where.

Usage::

    python -m benchmarks.op_count [--model dcgan|sg2-tiny] [--split K] [--batch B] [--path cpu|device]

On a GPU every operator is a kernel launch or at least a few microseconds of
host work, and a model as small as the DCGAN is bound by them (see "On a GPU"
in docs/performance.md), so the number of operators per step predicts the
engine's overhead there. This script counts them on the CPU, no GPU needed:
``--path device`` makes the engine take the branch it takes on accelerators
(no host reads: best-iterate tracking and failure masking by ``torch.where``,
the l1 projection through ``L1Workspace(host_reads=False)``), with
:func:`ilo_pl.policy.host_reads` as the tests do; ``--path cpu`` counts what runs on
the CPU. Counting uses a ``TorchDispatchMode``, so backward operators count
too; ten steps of one stage (11-20, one of which logs, as one step in ten
does in a solve) are counted, the floor's steps likewise after 3
warm-up steps. Prints ops per step, the extra ops by name and by the line of
ilo-pl (or the Lightning function) they come from.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.op_count`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import collections
import logging
import traceback
import warnings
from pathlib import Path
from typing import Any, Counter, Dict, List, Optional

import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks import timing
from ilo_pl.api import solve
from ilo_pl.policy import host_reads

COUNTED = range(11, 21)  # ten steps: one of them logs (log_every = 10), as in a solve
#: Operators that read a value back to the host: a device synchronisation on an accelerator
#: (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()`` all dispatch ``_local_scalar_dense``).
HOST_READS = frozenset({"_local_scalar_dense"})


class OpCounter(TorchDispatchMode):
    """Counts dispatched operators by name and by where they were called from."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = collections.Counter()
        self.by_place: Counter[str] = collections.Counter()
        self.reads_by_place: Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.by_op[func.overloadpacket.__name__] += 1
        place = _place()
        self.by_place[place] += 1
        if func.overloadpacket.__name__ in HOST_READS:
            self.reads_by_place[_place(lightning_first=True)] += 1
        return func(*args, **(kwargs or {}))


def _place(lightning_first: bool = False) -> str:
    """The innermost ilo-pl (or benchmark floor) frame of the call, else the innermost Lightning function.

    ``lightning_first``: the innermost Lightning function if there is one below the innermost
    ilo-pl frame (a read Lightning makes inside an ilo-pl callback is Lightning's).
    """
    lightning = None
    for fr in reversed(traceback.extract_stack(limit=40)[:-2]):
        if lightning_first and lightning is not None:
            return lightning
        if lightning_first and "/torch/optim/" in fr.filename:
            return f"torch.optim: {fr.name}"
        if "/ilo_pl/" in fr.filename or fr.filename == timing.__file__:
            return f"{Path(fr.filename).name}:{fr.lineno} ({fr.name})"
        if lightning is None and "pytorch_lightning" in fr.filename:
            lightning = f"Lightning: {fr.name}"
    return lightning or "other"


class _Window(pl.Callback):
    """Counts the operators of the steps in ``COUNTED`` (from one step's start to the next's)."""

    def __init__(self) -> None:
        self.counter = OpCounter()
        self.step = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.step == COUNTED.start:
            self.counter.__enter__()
        if self.step == COUNTED.stop:
            self.counter.__exit__(None, None, None)
        self.step += 1


def _bar(kind: str) -> List[pl.Callback]:
    """The progress bar ``ilo-pl fit`` installs (``tqdm``, ``rich``), or none."""
    if kind == "none":
        return []
    from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar

    from ilo_pl.callbacks.progress import problem_progress_bar_for

    return [problem_progress_bar_for(TQDMProgressBar() if kind == "tqdm" else RichProgressBar())]


def count(model: str, split: int, batch: int, path: str, bar: str = "none") -> tuple:
    """``(ILO counter, floor counter)`` for one configuration; counts are totals over ``len(COUNTED)`` steps.

    ``bar``: the progress bar of the solve (``none`` as :func:`ilo_pl.api.solve` runs; ``tqdm``
    as ``ilo-pl fit`` does in a terminal; ``rich``).
    """
    gen = timing.make_generator(model)
    stages, kw = timing.stages_for(model, split, COUNTED.stop + 3)
    op, y = timing.make_problem(gen, batch)
    window = _Window()
    trainer_kwargs: Dict[str, Any] = {"accelerator": "cpu"}
    if bar != "none":
        trainer_kwargs["enable_progress_bar"] = True
    # "device": the accelerator branch (no host reads), as the tests take it on the CPU.
    with host_reads(path != "device"):
        solve(gen, op, y, stages, callbacks=[window, *_bar(bar)], trainer_kwargs=trainer_kwargs, **kw)
    state = gen.init_variables(batch, torch.Generator().manual_seed(0))
    state = gen.advance(state, 0, split) if split else state
    groups = gen.groups(split)
    floor = timing.FloorStep(gen, state, {k for k in state if stages[0].is_free(k, groups[k])}, split, op, y, stages[0].lr)
    for _ in range(3):
        floor()
    fc = OpCounter()
    with fc:
        for _ in COUNTED:
            floor()
    return window.counter, fc


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["dcgan", "sg2-tiny"], default="dcgan")
    parser.add_argument("--split", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--path", choices=["cpu", "device"], default="device",
                        help="the engine's CPU branch or its accelerator branch (default: device)")
    parser.add_argument("--progress-bar", choices=["none", "tqdm", "rich"], default="none",
                        help="the solve's progress bar: none (the API's default) or ilo-pl fit's (default: none)")
    parser.add_argument("--top", type=int, default=25, help="rows of the by-op and by-place tables")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    ilo, floor = count(args.model, args.split, args.batch, args.path, args.progress_bar)
    n = len(COUNTED)
    total_i, total_f = sum(ilo.by_op.values()) / n, sum(floor.by_op.values()) / n
    print(f"{args.model}, split {args.split}, batch {args.batch}, {args.path} path: operators per step: "
          f"ILO {total_i:.0f}, floor {total_f:.0f}, extra {total_i - total_f:.0f}")
    extra = {k: (v - floor.by_op.get(k, 0)) / n for k, v in ilo.by_op.items()}
    print("\nextra operators by name (per step):")
    for k, v in sorted(extra.items(), key=lambda kv: -kv[1])[: args.top]:
        if v > 0:
            print(f"  {v:6.1f}  {k}")
    reads = sum(ilo.reads_by_place.values()) / n
    print(f"\nhost reads per step (each a device sync on an accelerator): ILO {reads:.1f}, "
          f"floor {sum(floor.reads_by_place.values()) / n:.1f}")
    for k, v in ilo.reads_by_place.most_common(args.top):
        print(f"  {v / n:6.1f}  {k}")
    print("\nILO operators by place (per step; Lightning's own include the forward/backward it drives):")
    for k, v in ilo.by_place.most_common(args.top):
        print(f"  {v / n:6.1f}  {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
