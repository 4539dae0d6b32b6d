"""Just-in-time build of the CUDA kernels behind :mod:`ilo_pl.ops`.

The extension is compiled with ninja (``torch.utils.cpp_extension.load``) the
first time an op runs on a CUDA tensor with ``impl="auto"`` or ``"cuda"`` --
never at import, so CPU-only machines and machines without a compiler never
pay for it. Like the CPU kernel, it is built once per machine and environment
into its own keyed folder under ``~/.cache/ilo-pl/torch_extensions``
(:func:`ilo_pl.ops._build.load_cached`; the key adds the CUDA toolkit's
``nvcc`` and the GPU architectures built for), and later processes load it
without running ninja or nvcc. If the build fails, one ``logging.warning`` says why,
``impl="auto"`` keeps using the pure-PyTorch path and an explicit
``impl="cuda"`` raises.

The environment variable ``ILO_PL_OPS=native`` makes ``impl="auto"`` pick the
pure-PyTorch path (and skip the build) everywhere, e.g. to compare the two; an
explicit ``impl`` is not affected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from ilo_pl.ops._build import JitBuild, file_identity, load_cached
from ilo_pl.policy import native_only

logger = logging.getLogger(__name__)

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = ("ops.cpp", "upfirdn2d_kernel.cu", "fused_bias_act_kernel.cu")
_NAME = "ilo_pl_stylegan2_ops"

#: The extension's build (once per process; a failure is not retried).
BUILD: JitBuild[ModuleType] = JitBuild(
    logger, "the CUDA kernels", "using the pure-PyTorch upfirdn2d and fused_leaky_relu instead (correct, somewhat slower)"
)

#: The values of the StyleGAN-2 ops' ``impl`` argument.
OP_IMPLS = ("auto", "ref", "cuda")


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
            f"{fn}: impl='cuda' but the CUDA kernels could not be built ({BUILD.error}); install the CUDA "
            "toolkit (nvcc) and ninja, or use impl='ref' or 'auto'"
        )
    return ext


def load_extension() -> Optional[ModuleType]:
    """Build (once) and return the CUDA extension, or ``None`` if it cannot be built."""
    return BUILD.get(_build)


def _cuda_archs() -> str:
    """The GPU architectures the build targets: ``$TORCH_CUDA_ARCH_LIST``, else the visible GPUs'.

    That is how ``torch.utils.cpp_extension`` picks them; they are part of the build's key.
    """
    explicit = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if explicit:
        return f"TORCH_CUDA_ARCH_LIST={explicit}"
    if not torch.cuda.is_available():
        return "no GPU visible"
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return " ".join(f"{major}.{minor}" for major, minor in caps)


def _build() -> ModuleType:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        raise RuntimeError("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)")
    loaded = load_cached(
        _NAME,
        [_CSRC / s for s in _SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        is_python_module=True,
        # torch's build runs $PYTORCH_NVCC instead of nvcc when set, and passes -ccbin $CC to nvcc.
        key_extra={"nvcc": file_identity(os.environ.get("PYTORCH_NVCC") or os.path.join(CUDA_HOME, "bin", "nvcc")),
                   "ccbin": file_identity(os.environ.get("CC")), "archs": _cuda_archs()},
        on_build=lambda folder: logger.info(
            "building the CUDA kernels in %s (once per machine and environment, a minute or two)", folder
        ),
    )
    if loaded.built:
        logger.info("built the CUDA kernels in %.0f s", loaded.seconds)
    if not isinstance(loaded.result, ModuleType):
        raise TypeError(f"the CUDA kernels loaded as {type(loaded.result).__name__}, not as a module")
    return loaded.result
