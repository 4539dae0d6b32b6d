"""Just-in-time build of the CUDA kernels behind :mod:`ilo_pl.ops`, and the ops' dtype policy.

The extension is compiled with ninja (``torch.utils.cpp_extension.load``) the
first time an op sees a CUDA tensor -- never at import, so CPU-only machines
and machines without a compiler never pay for it. If the build fails, one
``logging.warning`` says why and every op keeps using its pure-PyTorch path.

Set the environment variable ``ILO_PL_OPS=native`` to skip the build and
always use the pure-PyTorch path (e.g. to compare the two).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import ContextManager, Optional

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = ("ops.cpp", "upfirdn2d_kernel.cu", "fused_bias_act_kernel.cu")
_NAME = "ilo_pl_stylegan2_ops"

_LOW_PRECISION = (torch.float16, torch.bfloat16)

_lock = threading.Lock()
_extension: Optional[ModuleType] = None
_failed = False


def native_only() -> bool:
    """Whether the user asked for the pure-PyTorch ops (``ILO_PL_OPS=native``)."""
    return os.environ.get("ILO_PL_OPS", "").strip().lower() == "native"


def extension_for(x: torch.Tensor) -> Optional[ModuleType]:
    """The compiled extension if ``x`` is a CUDA tensor and the build works, else ``None``.

    The first call with a CUDA tensor builds the extension (a minute or two);
    later calls return the cached module. A failed build is not retried.
    """
    if not x.is_cuda or native_only():
        return None
    return load_extension()


def load_extension() -> Optional[ModuleType]:
    """Build (once) and return the CUDA extension, or ``None`` if it cannot be built."""
    global _extension, _failed
    if _extension is not None or _failed:
        return _extension
    with _lock:
        if _extension is not None or _failed:
            return _extension
        try:
            from torch.utils.cpp_extension import CUDA_HOME, load

            if CUDA_HOME is None:
                raise RuntimeError("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)")
            _extension = load(
                name=_NAME,
                sources=[str(_CSRC / s) for s in _SOURCES],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                verbose=False,
            )
        except Exception as err:  # noqa: BLE001 - any build failure means: fall back
            _failed = True
            logger.warning(
                "ilo_pl.ops: could not build the CUDA kernels (%s: %s); using the pure-PyTorch "
                "upfirdn2d and fused_leaky_relu instead (correct, somewhat slower)",
                type(err).__name__,
                str(err).strip().splitlines()[-1] if str(err).strip() else "",
            )
    return _extension


def _reset_for_tests() -> None:
    """Forget the build state (tests only)."""
    global _extension, _failed
    _extension, _failed = None, False


# -- dtype policy shared by the ops ---------------------------------------------


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype an op computes in: float32 for half/bfloat16 inputs, else the input's own.

    float64 stays float64 (gradcheck); low precision is promoted because the
    ops' sums over kernel taps and the activation gain lose accuracy in it.
    """
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor; got dtype {x.dtype}")
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def no_autocast(x: Tensor) -> ContextManager:
    """A context that switches autocast off on ``x``'s device, so the op runs in its own dtype."""
    kind = x.device.type
    if kind in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(kind):
        return torch.autocast(device_type=kind, enabled=False)
    return contextlib.nullcontext()
