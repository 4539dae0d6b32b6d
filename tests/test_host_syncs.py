"""Host reads (device syncs on an accelerator) per ILO step, counted on the CPU.

Every ``.item()``, ``float(t)``, ``bool(t)`` or ``.tolist()`` dispatches
``aten::_local_scalar_dense``; on a GPU each is a synchronisation that stalls
the pipeline. On the engine's accelerator branch (forced with
:func:`ilo_pl.policy.host_reads`, as on a GPU) a steady-state step must make
none beyond the optimizer's own step counter (a CPU tensor, no device sync),
with no progress bar and with ilo-pl's problem bar (which reads the logged
loss once per logged value), while a stock Lightning bar still shows the loss.
"""

from __future__ import annotations

import collections
import traceback
from typing import Any, Counter, List

import pytest
import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ilo_pl.api import solve
from ilo_pl.callbacks.progress import problem_progress_bar_for
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.operators.inpainting import BoxMask
from ilo_pl.policy import host_reads
from ilo_pl.stages import Stage

STEPS = range(6, 18)  # steady state: after the stage's first steps, logging every 4 steps


class _Reads(TorchDispatchMode):
    """Counts host reads, by whether torch.optim made them."""

    def __init__(self) -> None:
        super().__init__()
        self.by_place: Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.overloadpacket.__name__ == "_local_scalar_dense":
            files = [f.filename for f in traceback.extract_stack(limit=25)]
            self.by_place["optimizer" if any("/torch/optim/" in f for f in files) else "other"] += 1
        return func(*args, **(kwargs or {}))


class _Window(pl.Callback):
    def __init__(self) -> None:
        self.reads = _Reads()
        self.step = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.step == STEPS.start:
            self.reads.__enter__()
        if self.step == STEPS.stop:
            self.reads.__exit__(None, None, None)
        self.step += 1


class _SeenBar(pl.callbacks.TQDMProgressBar):
    def __init__(self) -> None:
        super().__init__()
        self.seen: List[dict] = []

    def get_metrics(self, trainer, pl_module):  # noqa: ANN001, ANN201
        m = super().get_metrics(trainer, pl_module)
        self.seen.append(dict(m))
        return m


def _solve(bar: Any) -> _Window:
    gen = DCGANGenerator()
    x = gen(gen.init_variables(2, torch.Generator().manual_seed(1)))
    op = BoxMask(box=(20, 40, 20, 40)).build((3, 64, 64), 0)
    window = _Window()
    callbacks = [window] + ([bar] if bar is not None else [])
    with host_reads(False):
        solve(gen, op, op.A(x).detach(), [Stage(split=1, steps=STEPS.stop + 2, lr=0.05, free=["state"],
                                                 radius={"state": 300.0})],
              callbacks=callbacks, log_every=4,
              trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": bar is not None})
    return window


@pytest.mark.parametrize("bar", ["none", "problem"])
def test_a_steady_step_reads_nothing_back_but_the_optimizers_counter(bar: str) -> None:
    problem_bar = problem_progress_bar_for(pl.callbacks.TQDMProgressBar()) if bar == "problem" else None
    reads = _solve(problem_bar).reads.by_place
    n = len(STEPS)
    assert reads["optimizer"] == n  # Adam's step counter: a CPU tensor unless capturable
    # the problem bar reads the loss once per logged value (every 4th step), nothing else reads
    assert reads["other"] == (0 if bar == "none" else n // 4)


def test_a_stock_lightning_bar_still_shows_the_loss() -> None:
    bar = _SeenBar()
    _solve(bar)
    assert any("loss" in m for m in bar.seen)
