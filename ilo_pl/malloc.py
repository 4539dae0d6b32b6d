"""Keep freed host memory for reuse: glibc's allocator settings for ILO's repeated steps.

Every ILO step allocates and frees the same large activations. glibc's
``malloc`` serves blocks above its mmap threshold (128 KiB, rising to at most
32 MiB) with fresh ``mmap`` calls and unmaps them on ``free``, so each step
page-faults its activations in again, and the cost grows with the batch: on
the CPU a 256x256 StyleGAN-2 step spent more per image at batch 8 than at
batch 1 (``docs/performance.md``, "Batching"). Two ``mallopt`` settings keep
freed memory in the heap for the next step instead:

* ``M_MMAP_MAX = 0``: no block is served by ``mmap``;
* ``M_TRIM_THRESHOLD`` at its largest (2 GiB - 1): free memory at the top of
  the heap is returned to the system only beyond that.

Measured: 18-44% less CPU time per 256x256 StyleGAN-2 step, and the DCGAN's
per-image cost at batch 16 from 0.41x to 0.37x of batch 1; the price is a
higher resident peak (up to about 17% at 256x256 batch 8), since freed pages
are kept.

``ilo-pl fit``, ``regenerate`` and ``demo`` call :func:`keep_freed_memory`
when they start; ``ILO_PL_MALLOC=system`` leaves the allocator as it is. A
program that calls :func:`ilo_pl.api.solve` or ``Trainer.fit`` itself decides
for its own process: call :func:`keep_freed_memory` first, or set glibc's
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<bytes>``. Nothing is changed
when the C library is not glibc or another allocator (jemalloc, tcmalloc,
mimalloc) is preloaded: they manage freed memory themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

#: ``mallopt`` parameters (glibc ``<malloc.h>``).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: The largest trim threshold ``mallopt`` takes (an ``int``).
TRIM_THRESHOLD = 2**31 - 1
#: Environment variable: ``system`` leaves the allocator alone; ``keep`` (default) keeps freed memory.
ENV = "ILO_PL_MALLOC"
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

_applied: Optional[bool] = None


def _glibc() -> Optional[ctypes.CDLL]:
    """The process's C library if it is glibc (it has ``gnu_get_libc_version``), else ``None``."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - no dynamic C library at all
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def keep_freed_memory(environ: Optional[dict] = None) -> bool:
    """Set glibc's allocator to keep freed memory for reuse (see the module docstring).

    Idempotent; process-wide. Call it before the solve's first step.

    Args:
        environ: the environment to read ``ILO_PL_MALLOC`` and ``LD_PRELOAD`` from
            (default ``os.environ``).

    Returns:
        Whether the settings are now in effect: ``False`` with ``ILO_PL_MALLOC=system``,
        another preloaded allocator, or a C library other than glibc.

    Raises:
        ValueError: ``ILO_PL_MALLOC`` is neither ``keep`` nor ``system``.
    """
    global _applied
    env = os.environ if environ is None else environ
    choice = env.get(ENV, "keep").strip().lower() or "keep"
    if choice not in ("keep", "system"):
        raise ValueError(f"{ENV}={env.get(ENV)!r}: use 'keep' (the default: keep freed memory for reuse) "
                         f"or 'system' (leave the C library's allocator as it is)")
    if choice == "system" or any(name in env.get("LD_PRELOAD", "") for name in _PRELOADED):
        return False
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success, 0 on failure
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
