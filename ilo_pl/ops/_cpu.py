"""Just-in-time build of ilo-pl's CPU kernel: the in-place l1-ball projection.

The kernel (``csrc/l1_projection_cpu.cpp``) is compiled with
``torch.utils.cpp_extension.load`` (ninja and a C++ compiler; about 25 s on
an idle core) the first time a projection runs on CPU tensors, once per
machine and environment: the build is cached in its own folder under
``~/.cache/ilo-pl/torch_extensions`` (``$XDG_CACHE_HOME`` or
``$TORCH_EXTENSIONS_DIR`` move it), keyed by Python, torch, the source, the
compiler and the flags (:func:`ilo_pl.ops._build.load_cached`), and later
processes load it without running ninja or the compiler. It is compiled for
the SIMD level PyTorch itself detected on this CPU
(``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2 or the portable
default), and that level is part of the build's name and key, so a home
directory shared by machines of different CPUs never runs a build on a CPU
without its instructions.

If the build fails (no compiler, no ninja), one ``logging.warning`` says why
(:func:`build_error` keeps it), ``impl="auto"`` of
:func:`ilo_pl.projections.project_l1_ball_` keeps its pure-PyTorch search
(exact too, slower on the CPU) and an explicit ``impl="kernel"`` raises.
``ILO_PL_OPS=native`` makes ``impl="auto"`` skip the kernel and its build;
an explicit ``impl="kernel"`` still builds it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from ilo_pl.ops._build import JitBuild, load_cached

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).resolve().parent / "csrc" / "l1_projection_cpu.cpp"

#: How long the first build takes, for the message that announces it (measured; see README).
BUILD_TIME = "25 s"

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
        loaded = load_cached(
            f"ilo_pl_cpu_ops_{isa}",
            [_SOURCE],
            extra_cflags=["-O3", "-fopenmp-simd", *_ISA_FLAGS.get(isa, [])],
            is_python_module=False,
            key_extra={"isa": isa},
            on_build=lambda folder: logger.info(  # explain the pause of the first run
                "building the CPU l1-projection kernel (%s) in %s; once per machine and environment, "
                "about %s", isa, folder, BUILD_TIME,
            ),
        )
    finally:
        ext_logger.setLevel(level)
    if loaded.built:
        logger.info("built the CPU l1-projection kernel (%s) in %.1f s", isa, loaded.seconds)
    return torch.ops.ilo_pl_cpu.l1_project_


def build_error() -> str:
    """Why the kernel's build failed (``"ExcType: last line"``); ``""`` if it has not failed."""
    return BUILD.error
