"""What the benchmark scripts share besides timing: paths, reading result CSVs, logging set-up."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch

#: The repository root (configs, default result folders).
ROOT = Path(__file__).resolve().parents[1]
#: ``../shared`` beside the clone: benchmark faces and fixtures.
SHARED = ROOT.parent / "shared"
#: The default results folder.
RESULTS = ROOT / "benchmarks" / "results"

#: Lightning's loggers, silenced by the scripts (their advice does not apply to benchmark solves).
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")


def read_rows(path: Path) -> List[Dict[str, str]]:
    """The rows of a results CSV (``[]`` if it does not exist)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def display_path(path: Path) -> str:
    """``path`` relative to the repository root when it is beside it (``../shared/...``), else absolute."""
    here = Path(path).resolve()
    try:
        return os.path.relpath(here, ROOT) if here.is_relative_to(ROOT.parent) else str(here)
    except ValueError:  # another drive
        return str(here)


def silence_lightning(threads: Optional[int] = None) -> None:
    """Silence Lightning's chatter; set torch's CPU threads when ``threads`` is given (> 0)."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if threads and threads > 0:  # 1 avoids OpenMP oversubscription on a shared machine
        torch.set_num_threads(threads)


def quiet_run_setup(threads: Optional[int]) -> None:
    """Log to stderr with times, silence Lightning's chatter and set torch's CPU threads."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    silence_lightning(threads)
