"""Every place where ilo-pl touches private API of Lightning or PyTorch, in one module.

Lightning has no public hook for these needs; each function below says what it
reads or writes and why. ``tests/test_compat.py`` checks that each private
name still exists in the installed versions, so an upgrade that moves one
fails there, with the name, instead of deep inside a solve.

========================================  =====================================================
private name                              used for
========================================  =====================================================
``Trainer._accelerator_connector``        :func:`uses_distributed_sampler`: ``ILOStrategy``
``.use_distributed_sampler``              refuses a DistributedSampler before the process group
                                          exists (the trainer keeps the flag nowhere public).
``_TrainingEpochLoop``                    :func:`make_sigterm_check_local`: the per-step
``._broadcast_sigterm_tensor``            SIGTERM all-reduce would hang ranks that run out of
                                          problems at different steps; each rank checks its own.
``CSVLogger._root_dir/_save_dir``,        :func:`move_logger`: loggers write into the run
``TensorBoardLogger._root_dir``,          folder, which exists only once the run starts
``_experiment`` (both)                    (a logger that started already is left alone).
``GradScaler._scale``                     :func:`scale_tensor`: the per-sample overflow back-off
                                          scales the scale on the device (``get_scale()`` reads
                                          it to the host every step).
``MixedPrecision.scaler`` (attribute of   :func:`grad_scaler`: the scaler of ``16-mixed``, for
the precision plugin; undocumented)       that back-off and the per-sample gradient drop.
``Trainer.callbacks`` (replaced in place) :func:`replace_callback`: the CLI swaps the stock
                                          progress bar for one that shows the problem and stage.
``ProgressBar._leave``,                   :func:`progress_bar_settings`: the replacement keeps
``RichProgressBar._console_kwargs``       the stock bar's settings (no public getter).
``LightningModule._trainer``              :func:`attached_trainer`: the trainer or ``None``
                                          (``module.trainer`` raises when not attached).
========================================  =====================================================
"""

from __future__ import annotations

import types
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor


def grad_scaler(trainer: Any) -> Optional[torch.amp.GradScaler]:
    """The precision plugin's enabled ``GradScaler`` (``16-mixed``), or ``None`` (also without a trainer)."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def scale_tensor(scaler: torch.amp.GradScaler) -> Tensor:
    """The scaler's scale as the device tensor it keeps (no host read)."""
    return scaler._scale


def uses_distributed_sampler(trainer: Any) -> bool:
    """The trainer's ``use_distributed_sampler`` setting, readable before the process group exists."""
    return bool(trainer._accelerator_connector.use_distributed_sampler)


def _local_sigterm_check(loop: Any) -> None:
    """Stand-in for the loop's per-step SIGTERM broadcast: act on this rank's own flag."""
    if getattr(loop.trainer, "received_sigterm", False):
        raise SIGTERMException()


def make_sigterm_check_local(trainer: Any) -> None:
    """Replace the training loop's per-step SIGTERM collective by a check of this rank's own flag."""
    loop = trainer.fit_loop.epoch_loop
    if not hasattr(loop, "_broadcast_sigterm_tensor"):
        # Another Lightning version: its loop has no per-step broadcast to replace.
        warnings.warn(
            "ILOStrategy: this Lightning version's training loop has no _broadcast_sigterm_tensor; "
            "if it runs a collective every step, ranks with unequal numbers of problems can hang",
            stacklevel=2,
        )
        return
    loop._broadcast_sigterm_tensor = types.MethodType(_local_sigterm_check, loop)


def move_logger(logger: Any, run_dir: Union[str, Path]) -> bool:
    """Make a CSV or TensorBoard logger write under ``run_dir``, if it has not started yet.

    Returns:
        ``False`` (nothing changed) if the logger already started writing elsewhere.
    """
    from pytorch_lightning.loggers import CSVLogger

    if getattr(logger, "_experiment", None) is not None or not hasattr(logger, "_root_dir"):
        return False
    logger._root_dir = str(run_dir)
    if isinstance(logger, CSVLogger):
        logger._save_dir = str(run_dir)
    return True


def replace_callback(trainer: Any, old: Any, new: Any) -> None:
    """Put ``new`` in the place of the trainer's callback ``old`` (before the fit starts)."""
    callbacks = trainer.callbacks
    callbacks[next(i for i, cb in enumerate(callbacks) if cb is old)] = new


def progress_bar_settings(bar: Any) -> Dict[str, Any]:
    """The constructor settings of a stock Lightning progress bar that it keeps only privately."""
    settings: Dict[str, Any] = {"leave": bar._leave}
    if hasattr(bar, "_console_kwargs"):
        settings["console_kwargs"] = bar._console_kwargs
    return settings


def attached_trainer(module: Any) -> Any:
    """The trainer ``module`` is attached to, or ``None`` (without ``module.trainer``'s error)."""
    return getattr(module, "_trainer", None)


def cli_parser(cli: Any, subcommand: Optional[str]) -> Any:
    """The parser of one of a ``LightningCLI``'s subcommands (``LightningCLI._parser``, private)."""
    return cli._parser(subcommand)
