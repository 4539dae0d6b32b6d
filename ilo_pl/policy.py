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
* **Implementation choice.** Functions with an ``impl=`` argument accept only
  their listed values (:func:`check_impl`); ``ILO_PL_OPS=native`` makes
  ``impl="auto"`` pick the pure-PyTorch paths (:func:`native_only`).
"""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager, Iterator, Optional, Sequence, Union

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


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype an op computes in: ilo-pl's work dtype (:func:`ilo_pl.policy.work_dtype`).

    float64 stays float64 (gradcheck); half/bfloat16 are promoted to float32
    because the ops' sums over kernel taps and the activation gain lose
    accuracy in them.
    """
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor; got dtype {x.dtype}")
    return work_dtype(x.dtype)


def no_autocast(x: Tensor) -> ContextManager:
    """A context that switches autocast off on ``x``'s device, so the op runs in its own dtype."""
    kind = x.device.type
    if kind in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(kind):
        return torch.autocast(device_type=kind, enabled=False)
    return contextlib.nullcontext()


def native_only() -> bool:
    """Whether ``impl="auto"`` should pick the pure-PyTorch paths (``ILO_PL_OPS=native``)."""
    return os.environ.get("ILO_PL_OPS", "").strip().lower() == "native"


def check_impl(fn: str, impl: str, choices: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming ``fn`` and the valid values unless ``impl`` is one of ``choices``."""
    if impl not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{fn}: impl must be one of {valid}; got {impl!r}")
