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
* ``configure_optimizers()`` returns an optimizer over exactly the current
  variables and marks it with the attribute ``_ilo_owner = id(module)``, so a
  configuration that swapped in another optimizer (e.g. LightningCLI's
  ``optimizer:`` entry) is detected instead of silently optimising stale
  variables.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


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

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int) -> None:
        index = pl_module.stage_due(batch)
        if index is None:
            return
        if self.project_to_range and index > 0 and hasattr(pl_module, "project_to_range"):
            pl_module.project_to_range(batch, index)
        pl_module.begin_stage(batch, index)
        rebuild_optimizers(trainer)
        self.rebuilds += 1


def rebuild_optimizers(trainer: "pl.Trainer") -> None:
    """Re-run ``configure_optimizers`` and install the result in the trainer.

    Raises:
        RuntimeError: if the optimizer the trainer ends up with is not the
            module's own (a config replaced ``configure_optimizers``).
    """
    trainer.strategy.setup_optimizers(trainer)
    module = trainer.lightning_module
    for opt in trainer.optimizers:
        if getattr(opt, "_ilo_owner", None) != id(module):
            raise RuntimeError(
                "the trainer's optimizer was not built by the module's configure_optimizers "
                "(was an `optimizer:` or `lr_scheduler:` entry given in the config?). ILO rebuilds "
                "its optimizer at every stage over the new variables; remove that entry and set "
                "the learning rate per stage in `stages`"
            )
