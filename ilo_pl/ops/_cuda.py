"""Just-in-time build of the CUDA kernels behind :mod:`ilo_pl.ops`, the ops' dtype policy and ``impl`` checks.

The extension is compiled with ninja (``torch.utils.cpp_extension.load``) the
first time an op runs on a CUDA tensor with ``impl="auto"`` or ``"cuda"`` --
never at import, so CPU-only machines and machines without a compiler never
pay for it. If the build fails, one ``logging.warning`` says why,
``impl="auto"`` keeps using the pure-PyTorch path and an explicit
``impl="cuda"`` raises.

The environment variable ``ILO_PL_OPS=native`` makes ``impl="auto"`` pick the
pure-PyTorch path (and skip the build) everywhere, e.g. to compare the two; an
explicit ``impl`` is not affected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import ContextManager, Optional, Sequence

import torch
from torch import Tensor

from ilo_pl.policy import work_dtype

logger = logging.getLogger(__name__)

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = ("ops.cpp", "upfirdn2d_kernel.cu", "fused_bias_act_kernel.cu")
_NAME = "ilo_pl_stylegan2_ops"

_lock = threading.Lock()
_extension: Optional[ModuleType] = None
_failed = False
_error = ""

#: The values of the StyleGAN-2 ops' ``impl`` argument.
OP_IMPLS = ("auto", "ref", "cuda")


def native_only() -> bool:
    """Whether ``impl="auto"`` should pick the pure-PyTorch paths (``ILO_PL_OPS=native``)."""
    return os.environ.get("ILO_PL_OPS", "").strip().lower() == "native"


def check_impl(fn: str, impl: str, choices: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming ``fn`` and the valid values unless ``impl`` is one of ``choices``."""
    if impl not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{fn}: impl must be one of {valid}; got {impl!r}")


def extension_for(x: torch.Tensor) -> Optional[ModuleType]:
    """What ``impl="auto"`` runs on ``x``: the compiled extension, or ``None`` for the pure-PyTorch path.

    The extension when ``x`` is a CUDA tensor, ``ILO_PL_OPS=native`` is not
    set and the build works. The first call with a CUDA tensor builds the
    extension (a minute or two); later calls return the cached module. A
    failed build is not retried.
    """
    if not x.is_cuda or native_only():
        return None
    return load_extension()


def require_extension(fn: str, x: Tensor) -> ModuleType:
    """The extension for an explicit ``impl="cuda"`` call of ``fn`` on ``x`` (built if needed).

    Raises:
        ValueError: ``x`` is not a CUDA tensor.
        RuntimeError: the extension cannot be built here.
    """
    if not x.is_cuda:
        raise ValueError(
            f"{fn}: impl='cuda' runs on CUDA tensors; got a {x.device.type} tensor "
            "(move it with .cuda(), or use impl='ref' or 'auto')"
        )
    ext = load_extension()
    if ext is None:
        raise RuntimeError(
            f"{fn}: impl='cuda' but the CUDA kernels could not be built ({_error}); install the CUDA "
            "toolkit (nvcc) and ninja, or use impl='ref' or 'auto'"
        )
    return ext


def load_extension() -> Optional[ModuleType]:
    """Build (once) and return the CUDA extension, or ``None`` if it cannot be built."""
    global _extension, _failed, _error
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
            last = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            _error = f"{type(err).__name__}: {last}"
            logger.warning(
                "ilo_pl.ops: could not build the CUDA kernels (%s: %s); using the pure-PyTorch "
                "upfirdn2d and fused_leaky_relu instead (correct, somewhat slower)",
                type(err).__name__,
                last,
            )
    return _extension


def _reset_for_tests() -> None:
    """Forget the build state (tests only)."""
    global _extension, _failed, _error
    _extension, _failed, _error = None, False, ""


# -- dtype policy shared by the ops ---------------------------------------------


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
