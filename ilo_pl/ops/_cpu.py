"""Just-in-time build of ilo-pl's CPU kernel: the in-place l1-ball projection.

The kernel (``csrc/l1_projection_cpu.cpp``) is compiled once per machine with
``torch.utils.cpp_extension.load`` (ninja and a C++ compiler; about 10-20 s)
the first time a projection runs on CPU tensors, and cached by PyTorch under
``~/.cache/torch_extensions`` (``TORCH_EXTENSIONS_DIR`` moves it). It is
compiled for the SIMD level PyTorch itself detected on this CPU
(``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2 or the portable
default), and that level is part of the build's name, so a home directory
shared by machines of different CPUs never runs a build on a CPU without its
instructions.

If the build fails (no compiler, no ninja), one ``logging.warning`` says why
(:func:`build_error` keeps it), ``impl="auto"`` of
:func:`ilo_pl.projections.project_l1_ball_` keeps its pure-PyTorch search
(exact too, slower on the CPU) and an explicit ``impl="kernel"`` raises.
``ILO_PL_OPS=native`` makes ``impl="auto"`` skip the kernel and its build;
an explicit ``impl="kernel"`` still builds it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ilo_pl.ops._build import JitBuild

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).resolve().parent / "csrc" / "l1_projection_cpu.cpp"

#: Compiler flags per SIMD level PyTorch reports (its own dispatch levels).
_ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
    "avx2": ["-mavx2", "-mfma"],
}

#: The kernel's build (once per process; a failure is not retried).
BUILD: JitBuild[Callable[..., torch.Tensor]] = JitBuild(
    logger,
    "the CPU l1-projection kernel",
    "using the pure-PyTorch projection instead (exact, slower). Install a C++ compiler and ninja to get "
    "it, or set ILO_PL_OPS=native to skip the attempt.",
)


def _isa() -> str:
    try:
        level = str(torch.backends.cpu.get_cpu_capability()).lower()
    except Exception:  # noqa: BLE001 - an old or exotic build: use portable code
        return "default"
    return level if level in _ISA_FLAGS else "default"


def _has_cached_build(name: str) -> bool:
    """Whether PyTorch's extension cache already holds a built library for ``name``."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        build = Path(_get_build_directory(name, verbose=False))
        return any(build.glob(f"{name}*.so")) or any(build.glob(f"{name}*.pyd"))
    except Exception:  # noqa: BLE001 - a private helper: if it moved, just announce the build
        return False


def l1_projection_kernel() -> Optional[Callable[..., torch.Tensor]]:
    """The compiled ``ilo_pl_cpu::l1_project_`` op, built on first use; ``None`` if unavailable.

    Signature: ``l1_project_(param [B, n], anchor [B, n], radius [B] float64,
    theta [B] float64 (in: guesses, NaN for none; out: thresholds of the rows
    projected), scratch [B, n]) -> status [B] int8`` (0 inside, untouched;
    1 projected; 2 radius 0, set to the anchor; 3 non-finite norm, and then no
    row was written). ``param``, ``anchor`` and the scratch are contiguous CPU
    tensors of one dtype, float32 or float64.

    Builds whatever ``ILO_PL_OPS`` says: that variable only steers
    ``impl="auto"`` (:func:`ilo_pl.projections.l1_impl_for`), which then never
    calls this. A failed build is not retried.
    """
    return BUILD.get(_build)


def _build() -> Callable[..., torch.Tensor]:
    isa = _isa()
    # cpp_extension warns at import on machines without CUDA; irrelevant for a CPU build.
    ext_logger = logging.getLogger("torch.utils.cpp_extension")
    level = ext_logger.level
    ext_logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load

        name = f"ilo_pl_cpu_ops_{isa}"
        announced = not _has_cached_build(name)
        if announced:  # explain the pause of the first run
            logger.info("building the CPU l1-projection kernel (%s; once per machine, 10-20 s)", isa)
        start = time.perf_counter()
        load(
            name=name,
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-fopenmp-simd", *_ISA_FLAGS.get(isa, [])],
            is_python_module=False,
            verbose=False,
        )
        took = time.perf_counter() - start
        if not announced and took > 3.0:  # a rebuild (changed sources or flags)
            logger.info("rebuilt the CPU l1-projection kernel (%s) in %.0f s", isa, took)
    finally:
        ext_logger.setLevel(level)
    return torch.ops.ilo_pl_cpu.l1_project_


def build_error() -> str:
    """Why the kernel's build failed (``"ExcType: last line"``); ``""`` if it has not failed."""
    return BUILD.error
