"""Kernels compiled on first use: a keyed on-disk cache, and one build per process.

What :mod:`ilo_pl.ops._cuda` (the StyleGAN-2 CUDA kernels) and
:mod:`ilo_pl.ops._cpu` (the CPU l1 projection) share:

* :class:`JitBuild`: the once-per-process build of one kernel: the lock, the
  result, the failure and its one-line reason, and the one warning a failed
  build gives.
* :func:`load_cached`: the build itself, cached on disk so that it runs once
  per machine and environment. Each build gets its own folder,
  :func:`extensions_root` ``/ <name>-<key>``, where the key hashes everything
  the compiled library depends on (:func:`build_key`): the Python ABI, the
  torch version and installation, the sources' contents, the compiler (its
  resolved path, size and modification time), the flags and what the caller
  adds (the CPU's SIMD level, the CUDA architectures). A finished build leaves
  a stamp file there; later processes find it and load the library directly,
  without running ninja or the compiler, whatever ``PATH`` says. A build runs
  ``torch.utils.cpp_extension.load`` with the ``ninja`` that ilo-pl depends on
  (the ``ninja`` pip package's binary, put first on ``PATH`` for the build
  only), never whichever ninja ``PATH`` finds first.

Before, the builds lived in PyTorch's shared ``~/.cache/torch_extensions``
under a name without such a key, so checkouts with different environments, or
the same one with another ninja first on ``PATH``, rebuilt each other's
kernel again and again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, Generic, Iterator, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import torch

T = TypeVar("T")

#: Bumped when the layout of a build folder or what the key covers changes.
CACHE_VERSION = 1
#: The file a finished build leaves in its folder (JSON: the key's parts, the build time).
STAMP = "ilo-pl-build.json"
#: Only one build at a time in this process: a build changes ``os.environ["PATH"]``.
_BUILD_LOCK = threading.Lock()


class JitBuild(Generic[T]):
    """The once-per-process build of one kernel.

    Args:
        logger: where the failure's warning goes.
        what: what is built, for the warning (``"the CUDA kernels"``).
        fallback: what runs instead, for the warning.
    """

    def __init__(self, logger: logging.Logger, what: str, fallback: str) -> None:
        self.logger, self.what, self.fallback = logger, what, fallback
        self._lock = threading.Lock()
        self.result: Optional[T] = None
        self.failed = False
        #: Why the build failed (``"ExcType: last line"``); ``""`` if it has not failed.
        self.error = ""

    def get(self, build: Callable[[], T]) -> Optional[T]:
        """``build()``'s result, built on the first call; ``None`` if the build failed (then or before)."""
        if self.result is not None or self.failed:
            return self.result
        with self._lock:
            if self.result is not None or self.failed:
                return self.result
            try:
                self.result = build()
            except Exception as err:  # noqa: BLE001 - any build failure means: fall back
                self.failed = True
                lines = str(err).strip().splitlines()
                last = lines[-1] if lines else ""
                self.error = f"{type(err).__name__}: {last}"
                self.logger.warning(
                    "ilo_pl.ops: could not build %s (%s); %s", self.what, self.error, self.fallback
                )
        return self.result

    def state(self) -> Tuple[Optional[T], bool, str]:
        """``(result, failed, error)``, to restore with :meth:`restore` (tests)."""
        return self.result, self.failed, self.error

    def restore(self, state: Tuple[Optional[T], bool, str]) -> None:
        """Put back a :meth:`state` (tests)."""
        self.result, self.failed, self.error = state

    def reset(self) -> None:
        """Forget the build (tests): the next :meth:`get` builds again."""
        self.restore((None, False, ""))


# ----------------------------------------------------------------------------- the on-disk cache


def extensions_root() -> Path:
    """The folder that holds ilo-pl's kernel builds, one subfolder per build key.

    ``$TORCH_EXTENSIONS_DIR`` if it is set (PyTorch's own variable for where
    JIT builds go), else ``$XDG_CACHE_HOME/ilo-pl/torch_extensions`` (with
    ``~/.cache`` when ``XDG_CACHE_HOME`` is unset).
    """
    explicit = os.environ.get("TORCH_EXTENSIONS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "ilo-pl" / "torch_extensions"


def file_identity(program: Optional[str]) -> str:
    """``"<resolved path> <size> <mtime_ns>"`` of an executable (looked up on ``PATH``), or ``"missing: ..."``.

    Cheap (no subprocess): an upgraded or different compiler changes it.
    """
    if not program:
        return "missing: (none)"
    found = shutil.which(program) if os.sep not in program else program
    if not found or not os.path.isfile(found):
        return f"missing: {program}"
    real = os.path.realpath(found)
    st = os.stat(real)
    return f"{real} {st.st_size} {st.st_mtime_ns}"


def cxx_compiler() -> str:
    """The C++ compiler ``torch.utils.cpp_extension`` runs: ``$CXX``, else ``c++`` (``cl`` on Windows)."""
    return os.environ.get("CXX", "cl" if os.name == "nt" else "c++")


def build_key(
    name: str,
    sources: Sequence[Union[str, Path]],
    flags: Sequence[str] = (),
    extra: Optional[Mapping[str, str]] = None,
) -> Tuple[str, Dict[str, str]]:
    """The cache key of a build: a short hash and the parts it hashes.

    The parts: ilo-pl's cache layout version, the Python ABI tag, the torch
    version (with its CUDA/HIP version) and installation folder (the headers
    and libraries the build uses), the sources' contents, the C++ compiler
    (:func:`file_identity` of :func:`cxx_compiler`), ``flags`` and ``extra``
    (e.g. ``{"isa": "avx2"}``). Not ``PATH``, not the ninja version: neither
    changes the library.

    Args:
        name: the extension's name.
        sources: its source files (their contents are hashed).
        flags: compiler flags.
        extra: further ``name: value`` pairs that change the library.

    Returns:
        ``(key, parts)``: 16 hex digits, and the parts as strings.
    """
    src = hashlib.sha256()
    for path in sources:
        path = Path(path)
        src.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    parts: Dict[str, str] = {
        "cache_version": str(CACHE_VERSION),
        "name": name,
        "python": f"{sys.implementation.cache_tag}{getattr(sys, 'abiflags', '')}",
        "torch": f"{torch.__version__} cuda={torch.version.cuda} hip={getattr(torch.version, 'hip', None)}",
        "torch_dir": os.path.realpath(os.path.dirname(torch.__file__)),
        "sources": src.hexdigest(),
        "compiler": f"{cxx_compiler()} = {file_identity(cxx_compiler())}",
        "flags": " ".join(flags),
    }
    for k, v in sorted((extra or {}).items()):
        parts[f"extra.{k}"] = str(v)
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16], parts


def packaged_ninja_dir() -> Optional[str]:
    """The folder of the ``ninja`` binary of the ``ninja`` pip package (ilo-pl's dependency); ``None`` if absent."""
    try:
        import ninja  # the pip package: its binary, not whichever ninja PATH finds first
    except ImportError:
        return None
    folder = getattr(ninja, "BIN_DIR", "") or ""
    exe = "ninja.exe" if os.name == "nt" else "ninja"
    return folder if folder and os.path.isfile(os.path.join(folder, exe)) else None


@contextlib.contextmanager
def packaged_ninja_first() -> Iterator[Optional[str]]:
    """Within the block, ``PATH`` starts with :func:`packaged_ninja_dir` (unchanged if there is none).

    Yields the folder put first (or ``None``). ``PATH`` is restored afterwards.
    """
    folder = packaged_ninja_dir()
    if folder is None:
        yield None
        return
    before = os.environ.get("PATH")
    os.environ["PATH"] = folder + (os.pathsep + before if before else "")
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = before


@dataclass
class Loaded:
    """What :func:`load_cached` returns.

    Attributes:
        result: the Python module (``is_python_module=True``) or the library's path.
        folder: the build folder.
        built: whether this call compiled it (``False``: a finished build was loaded).
        seconds: how long the build took (0 when nothing was built).
    """

    result: Union[ModuleType, str]
    folder: Path
    built: bool
    seconds: float


def build_folder(name: str, key: str) -> Path:
    """Where the build of ``name`` with ``key`` lives: ``extensions_root() / f"{name}-{key}"``."""
    return extensions_root() / f"{name}-{key}"


def is_built(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds a finished build of ``name`` (its library and the stamp)."""
    return (folder / STAMP).is_file() and (folder / f"{name}{_LIB_EXT}").is_file()


_LIB_EXT = ".pyd" if os.name == "nt" else ".so"


def _mtime(path: Path) -> Optional[int]:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _import_library(name: str, folder: Path, is_python_module: bool) -> Union[ModuleType, str]:
    path = folder / f"{name}{_LIB_EXT}"
    if not is_python_module:
        torch.ops.load_library(str(path))
        return str(path)
    spec = importlib.util.spec_from_file_location(name, str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the extension {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_cached(
    name: str,
    sources: Sequence[Union[str, Path]],
    *,
    extra_cflags: Sequence[str] = (),
    extra_cuda_cflags: Optional[Sequence[str]] = None,
    is_python_module: bool,
    key_extra: Optional[Mapping[str, str]] = None,
    on_build: Optional[Callable[[Path], None]] = None,
) -> Loaded:
    """Load extension ``name``, building it first if its keyed folder holds no finished build.

    The build runs ``torch.utils.cpp_extension.load`` into
    :func:`build_folder` with the packaged ninja first on ``PATH``
    (:func:`packaged_ninja_first`), then writes the stamp, holding a file
    lock in the folder: processes that start together build once, the others
    wait and load that build. A folder with a stamp is loaded directly (no
    ninja, no compiler, no lock), in any process.

    Args:
        name: the extension's name.
        sources: its source files.
        extra_cflags: C++ flags.
        extra_cuda_cflags: nvcc flags (CUDA extensions).
        is_python_module: load as a Python module (pybind11), else as a library of torch ops.
        key_extra: further parts of the key (:func:`build_key`).
        on_build: called with the folder right before a build starts (to announce it).

    Raises:
        Exception: whatever the build or the loading raises.
    """
    flags = [*extra_cflags, *(["nvcc:", *extra_cuda_cflags] if extra_cuda_cflags is not None else [])]
    key, parts = build_key(name, sources, flags, key_extra)
    folder = build_folder(name, key)
    if is_built(folder, name):
        return Loaded(_import_library(name, folder, is_python_module), folder, False, 0.0)
    from filelock import FileLock  # a dependency of torch
    from torch.utils.cpp_extension import load

    folder.mkdir(parents=True, exist_ok=True)
    # One builder at a time per folder, across threads and processes; whoever waited finds the stamp.
    with _BUILD_LOCK, FileLock(str(folder / "ilo-pl.lock")):
        if is_built(folder, name):
            return Loaded(_import_library(name, folder, is_python_module), folder, False, 0.0)
        library = folder / f"{name}{_LIB_EXT}"
        before = _mtime(library)
        if on_build is not None:
            on_build(folder)
        start = time.perf_counter()
        with packaged_ninja_first():
            ninja_used = shutil.which("ninja")  # what torch's build runs
            kwargs = dict(
                name=name,
                sources=[str(s) for s in sources],
                extra_cflags=list(extra_cflags),
                build_directory=str(folder),
                is_python_module=is_python_module,
                verbose=False,
            )
            if extra_cuda_cflags is not None:
                kwargs["extra_cuda_cflags"] = list(extra_cuda_cflags)
            result = load(**kwargs)
        seconds = time.perf_counter() - start
        # ninja may find nothing to do (a finished build whose stamp was lost): then nothing was built.
        built = before is None or _mtime(library) != before
        if built or not (folder / STAMP).is_file():
            stamp = {"key": key, "parts": parts, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "seconds": round(seconds, 2) if built else None,
                     "ninja": ninja_used}
            tmp = folder / f".{STAMP}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, folder / STAMP)
    return Loaded(result, folder, built, seconds if built else 0.0)
