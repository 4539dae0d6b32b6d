"""The Trainer settings ILO needs, in one place (the CLI's defaults and the programmatic API's).

ILO runs one epoch over the problem batches (each batch once per optimizer
step), keeps no checkpoints (a run resumes from its run folder instead, see
:mod:`ilo_pl.resume`), runs no validation sanity steps, and shards problems
itself (no ``DistributedSampler``).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict

#: Defaults of ``ilo-pl fit`` (LightningCLI ``trainer_defaults``); any may be overridden.
TRAINER_DEFAULTS: Dict[str, Any] = {
    "max_epochs": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "use_distributed_sampler": False,
    "log_every_n_steps": 10,
}


def default_trainer_kwargs() -> Dict[str, Any]:
    """:data:`TRAINER_DEFAULTS` plus what :func:`ilo_pl.api.solve` adds: one device, no progress bar."""
    return {**TRAINER_DEFAULTS, "accelerator": "auto", "devices": 1, "enable_progress_bar": False}


def quiet_lightning() -> None:
    """Silence Lightning's advice that does not apply to ILO (workers, log interval)."""
    for pattern in (".*does not have many workers.*", r".*module\(s\) in eval mode.*", ".*overridden `transfer_batch_to_device`.*", ".*log_every_n_steps.*", ".*LeafSpec.*", ".*treespec.*"):
        warnings.filterwarnings("ignore", message=pattern)
