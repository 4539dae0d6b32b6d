"""Stage transitions: move the optimisation to the next split and rebuild the optimizer.

Protocol (what a LightningModule offers to use :class:`StageTransition`):

* ``stage_due(batch) -> Optional[int]``: the index of the stage that must begin
  before this batch is trained on (a new problem batch starts stage 0), or
  ``None`` when the current stage goes on;
* ``begin_stage(batch, index) -> None``: install that stage's variables (for
  ILO: map the previous solution with ``G1`` to the next split, make it the
  new variable and its anchor);
* optionally ``project_to_range(batch, index) -> None``: before stage
  ``index`` begins, pull the current solution back into the range of the
  earlier layers (ILO, Algorithm 1, line 5); called only when the callback is
  built with ``project_to_range=True``;
* ``configure_optimizers()`` returns an optimizer over exactly the module's
  trainable parameters (the current variables): after each rebuild this is
  checked, so a configuration that swapped in another optimizer (e.g.
  LightningCLI's ``optimizer:`` entry, built once over other parameters) is
  detected instead of silently optimising stale variables. Lightning calls it
  once before the first batch, when no stage has begun: it may return
  ``None`` then (no placeholder parameter is needed); the first stage
  installs the real optimizer before the first step.

The protocols are checked when the fit starts (see
:mod:`ilo_pl.callbacks.protocols`).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import pytorch_lightning as pl

from ilo_pl.callbacks.protocols import RangeProjecting, Staged, require


class StageTransition(pl.Callback):
    """Begin stages at their boundaries and rebuild optimizers and schedulers.

    Args:
        project_to_range: before entering a deeper split, first project the
            current solution back to the range of the earlier layers.
    """

    def __init__(self, project_to_range: bool = False) -> None:
        super().__init__()
        self.project_to_range = project_to_range
        #: Number of optimizer rebuilds (one per stage begun).
        self.rebuilds = 0
        self._silenced: Optional[tuple] = None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        require(pl_module, Staged, self)
        if self.project_to_range:
            require(pl_module, RangeProjecting, self)
        # Lightning warns that a fit "will run with no optimizer" when
        # configure_optimizers returns None before the first stage; under this
        # callback that is false (the first stage installs one before the first
        # step), so the warning is silenced until then, and only that warning.
        warnings.filterwarnings("ignore", message=_NO_OPTIMIZER_WARNING)
        self._silenced = warnings.filters[0]

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._unsilence()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._unsilence()  # Lightning skips teardown when a fit fails

    def _unsilence(self) -> None:
        if self._silenced is not None:
            try:
                warnings.filters.remove(self._silenced)
            except ValueError:  # someone reset the filters meanwhile
                pass
            self._silenced = None

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int) -> None:
        index = pl_module.stage_due(batch)
        if index is None:
            return
        if self.project_to_range and index > 0:
            pl_module.project_to_range(batch, index)
        pl_module.begin_stage(batch, index)
        rebuild_optimizers(trainer)
        self.rebuilds += 1
        self._unsilence()


#: Lightning's warning when ``configure_optimizers`` returns ``None`` (see :meth:`StageTransition.setup`).
_NO_OPTIMIZER_WARNING = r"`LightningModule.configure_optimizers` returned `None`"


def rebuild_optimizers(trainer: "pl.Trainer") -> None:
    """Re-run ``configure_optimizers`` and install the result in the trainer.

    Raises:
        RuntimeError: if an optimizer the trainer ends up with does not hold
            exactly the module's trainable parameters (a config replaced
            ``configure_optimizers``).
    """
    trainer.strategy.setup_optimizers(trainer)
    module = trainer.lightning_module
    want = {id(p) for p in module.parameters() if p.requires_grad}
    for opt in trainer.optimizers:
        have = {id(p) for group in opt.param_groups for p in group["params"]}
        if have != want:
            raise RuntimeError(
                f"the trainer's {type(opt).__name__} does not optimise exactly the module's current "
                f"variables ({len(have & want)} of its {len(have)} parameters are among the module's "
                f"{len(want)} trainable ones; was an `optimizer:` or `lr_scheduler:` entry given in the "
                "config?). ILO rebuilds its optimizer at every stage over the new variables; remove "
                "that entry and set the learning rate per stage in `stages`"
            )
