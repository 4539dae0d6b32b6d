"""What an ILO step logs, logged so that no step makes the host wait for the device.

Lightning converts every value logged with ``prog_bar=True`` to a Python number
at the end of *every* step (``_ResultCollection.metrics`` ->
``convert_tensors_to_scalars``), not only on the steps that log: with a
device-resident loss that is one host sync per progress-bar value per step,
and a Python float logged (``stage``) is copied to the device each time it is
logged. So the module logs:

* ``loss`` (the batch's mean measurement loss) always, to the callbacks and
  loggers, as a device tensor; to Lightning's progress bar only when the
  trainer shows a stock Lightning bar (a user's ``TQDMProgressBar`` or
  ``RichProgressBar``), which can show nothing else. ilo-pl's own problem
  bars (:mod:`ilo_pl.callbacks.progress`) read it themselves, once per logged
  value, when they refresh. With no progress bar (:func:`ilo_pl.api.solve`'s
  default) nothing is read back per step.
* ``stage`` only when the trainer has loggers (the progress bars know the
  stage from the module).
* ``loss/<term>/stage<k>``: each loss term's batch mean, to callbacks and loggers.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor


def stock_progress_bar(trainer: Any) -> bool:
    """Whether the trainer shows a progress bar that only knows Lightning's ``prog_bar`` metrics."""
    from ilo_pl.callbacks.progress import reads_module_metrics

    bar = getattr(trainer, "progress_bar_callback", None)
    return bar is not None and not reads_module_metrics(bar)


def log_step(module: Any, loss: Tensor, terms: Mapping[str, Tensor], batch_size: int, stage: int) -> None:
    """Log one step's values from ``module.training_step`` (see the module docstring for what goes where).

    Args:
        module: the LightningModule (its ``log`` and ``trainer`` are used).
        loss: the summed loss of the batch (a 0-d tensor).
        terms: per-sample values of each loss term (``[B]`` tensors).
        batch_size: problems in the batch.
        stage: the current stage index.
    """
    trainer = module.trainer
    # The problem progress bars read ``loss`` back only when this count changes.
    module.log_count = getattr(module, "log_count", 0) + 1
    module.log("loss", loss.detach() / batch_size, prog_bar=stock_progress_bar(trainer), on_step=True,
               batch_size=batch_size)
    if getattr(trainer, "loggers", None):
        module.log("stage", float(stage), on_step=True, batch_size=batch_size)
    for name, term in terms.items():
        module.log(f"loss/{name}/stage{stage}", term.detach().mean(), on_step=True, batch_size=batch_size)
