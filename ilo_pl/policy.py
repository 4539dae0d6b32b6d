"""Two small policies that several parts of ilo-pl share.

* **Work dtype.** Threshold searches (l1 projection) and FFTs (partial
  circulant) are too coarse in half precision: they run in float64 for
  float64 inputs and in float32 otherwise (half/bfloat16 inputs under mixed
  precision are computed in float32 and cast back).
* **Host reads.** Reading a tensor's value on the host (``bool(t.any())``,
  ``float(t)``) is free on the CPU and a device synchronisation elsewhere. On
  the CPU the per-step bookkeeping reads small masks to skip work in the usual
  cases; on accelerators it stays on the device with branch-free tensor ops.
  :func:`host_reads` overrides the choice for a block of code, e.g. to run
  (and test) the device path on the CPU.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import torch
from torch import Tensor


_forced_host_reads: Optional[bool] = None


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype numerically delicate work runs in for inputs of ``dtype``.

    >>> work_dtype(torch.float16), work_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def host_reads_free(where: Union[Tensor, torch.device, str]) -> bool:
    """Whether reading values on the host costs no device sync there (the CPU).

    Args:
        where: a tensor, or the device its values live on.

    >>> host_reads_free(torch.zeros(1)), host_reads_free("cuda:0")
    (True, False)
    """
    if _forced_host_reads is not None:
        return _forced_host_reads
    device = where.device if isinstance(where, Tensor) else torch.device(where)
    return device.type == "cpu"


@contextlib.contextmanager
def host_reads(allowed: bool) -> Iterator[None]:
    """Within the block, :func:`host_reads_free` answers ``allowed`` on every device.

    ``host_reads(False)`` runs the accelerator's sync-free bookkeeping on the
    CPU (its results are the same; only the work done differs). The choice is
    read when a problem batch starts and when a projection's workspace is made.

    >>> with host_reads(False):
    ...     host_reads_free(torch.zeros(1))
    False
    """
    global _forced_host_reads
    before, _forced_host_reads = _forced_host_reads, bool(allowed)
    try:
        yield
    finally:
        _forced_host_reads = before
