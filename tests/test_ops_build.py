"""The kernels' build cache (:mod:`ilo_pl.ops._build`): built once per machine and environment.

The cache folder is keyed by what the library depends on (not by ``PATH``),
builds run the ``ninja`` of the ``ninja`` pip package, and a finished build is
loaded by later processes without ninja or the compiler, whichever ninja comes
first on their ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from ilo_pl.ops import _build
from ilo_pl.ops._build import build_key, extensions_root, load_cached, packaged_ninja_dir, packaged_ninja_first

VENV_BIN = str(Path(sys.executable).parent)


def test_extensions_root_respects_torch_extensions_dir_then_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "exts"))
    assert extensions_root() == tmp_path / "exts"
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert extensions_root() == tmp_path / "cache" / "ilo-pl" / "torch_extensions"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert extensions_root() == Path.home() / ".cache" / "ilo-pl" / "torch_extensions"


def test_build_key_covers_sources_flags_compiler_and_extra_but_not_path(monkeypatch, tmp_path):
    src = tmp_path / "k.cpp"
    src.write_text("int f() { return 1; }\n")
    key, parts = build_key("k", [src], ["-O3"], {"isa": "avx2"})
    assert len(key) == 16 and parts["extra.isa"] == "avx2" and parts["python"].startswith(sys.implementation.cache_tag)
    # PATH (and so which ninja comes first) is not part of the key
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", VENV_BIN, os.environ.get("PATH", "")]))
    assert build_key("k", [src], ["-O3"], {"isa": "avx2"})[0] == key
    monkeypatch.setenv("PATH", os.pathsep.join([VENV_BIN, "/usr/bin", os.environ.get("PATH", "")]))
    assert build_key("k", [src], ["-O3"], {"isa": "avx2"})[0] == key
    # each of these is
    assert build_key("k", [src], ["-O2"], {"isa": "avx2"})[0] != key
    assert build_key("k", [src], ["-O3"], {"isa": "default"})[0] != key
    assert build_key("k2", [src], ["-O3"], {"isa": "avx2"})[0] != key
    monkeypatch.setenv("CXX", sys.executable)  # another "compiler"
    assert build_key("k", [src], ["-O3"], {"isa": "avx2"})[0] != key
    monkeypatch.delenv("CXX")
    src.write_text("int f() { return 2; }\n")
    assert build_key("k", [src], ["-O3"], {"isa": "avx2"})[0] != key


def test_packaged_ninja_is_first_on_path_during_the_build_only(monkeypatch):
    folder = packaged_ninja_dir()
    if folder is None:
        pytest.skip("the ninja pip package is not installed here")
    path = os.pathsep.join(["/usr/bin", os.environ.get("PATH", "")])
    monkeypatch.setenv("PATH", path)
    with packaged_ninja_first() as first:
        assert first == folder
        assert os.path.dirname(shutil.which("ninja")) == folder
    assert os.environ["PATH"] == path


def test_load_cached_builds_once_then_loads_whatever_path_says(monkeypatch, tmp_path):
    """A fake ``cpp_extension.load``: it runs once, with the packaged ninja first; the second call loads the stamp."""
    import torch.utils.cpp_extension as cpp

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    src = tmp_path / "k.cpp"
    src.write_text("// kernel\n")
    calls: List[Dict[str, Any]] = []

    def fake_load(**kwargs: Any) -> str:
        calls.append({**kwargs, "ninja": shutil.which("ninja")})
        lib = Path(kwargs["build_directory"]) / f"{kwargs['name']}.so"
        lib.write_bytes(b"")
        return str(lib)

    loads: List[str] = []
    monkeypatch.setattr(cpp, "load", fake_load)
    monkeypatch.setattr(_build, "_import_library", lambda name, folder, is_module: loads.append(name) or "lib")
    announced: List[Path] = []
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", VENV_BIN, os.environ.get("PATH", "")]))
    first = load_cached("k", [src], extra_cflags=["-O3"], is_python_module=False, on_build=announced.append)
    assert first.built and len(calls) == 1 and announced == [first.folder]
    assert first.folder.parent == tmp_path and first.folder.name.startswith("k-")
    if packaged_ninja_dir() is not None:
        assert os.path.dirname(calls[0]["ninja"]) == packaged_ninja_dir()
    assert calls[0]["build_directory"] == str(first.folder)
    stamp = json.loads((first.folder / _build.STAMP).read_text())
    assert stamp["parts"]["flags"] == "-O3" and stamp["seconds"] is not None
    monkeypatch.setenv("PATH", os.pathsep.join([VENV_BIN, "/usr/bin", os.environ.get("PATH", "")]))
    second = load_cached("k", [src], extra_cflags=["-O3"], is_python_module=False, on_build=announced.append)
    assert not second.built and second.folder == first.folder and loads == ["k"]
    assert len(calls) == 1 and len(announced) == 1  # no second build, no second announcement


_KERNEL_RUN = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
import torch
from ilo_pl.projections import project_l1_ball_
p = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0))
project_l1_ball_(p, torch.zeros(2, 1000), 1.0, impl="kernel")
print("norms", [round(v, 5) for v in p.abs().sum(1).tolist()])
"""


def test_cpu_kernel_builds_once_in_fresh_processes_whichever_ninja_is_first_on_path(tmp_path):
    """Compiles the kernel once (about 25 s): two fresh processes, venv bin first, then /usr/bin first."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler on this machine: the pure-PyTorch projection is used")
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path)
    outputs = []
    for first in ([VENV_BIN, "/usr/bin"], ["/usr/bin", VENV_BIN]):
        env["PATH"] = os.pathsep.join([*first, os.environ.get("PATH", "")])
        run = subprocess.run([sys.executable, "-c", _KERNEL_RUN], env=env, capture_output=True, text=True,
                             timeout=600, cwd=Path(__file__).resolve().parents[1])
        assert run.returncode == 0, run.stdout + run.stderr
        assert "norms [1.0, 1.0]" in run.stdout
        outputs.append(run.stdout)
        if len(outputs) == 1:
            (folder,) = tmp_path.iterdir()
            libs = list(folder.glob("*.so"))
            assert len(libs) == 1
            mtime = libs[0].stat().st_mtime_ns
    assert "built the CPU l1-projection kernel" in outputs[0]
    assert "building" not in outputs[1] and "built" not in outputs[1]
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # one build folder
    assert libs[0].stat().st_mtime_ns == mtime  # not rebuilt
    stamp = json.loads((folder / _build.STAMP).read_text())
    if packaged_ninja_dir() is not None:
        assert os.path.dirname(stamp["ninja"]) == packaged_ninja_dir()


def test_cuda_build_key_follows_the_compilers_torch_would_run(monkeypatch, tmp_path):
    """$PYTORCH_NVCC replaces nvcc and $CC is nvcc's host compiler (-ccbin): both change the binary, so the key."""
    import torch.utils.cpp_extension as cpp

    from ilo_pl.ops import _cuda

    seen = []

    def fake_load_cached(name, sources, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(kwargs["key_extra"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(cpp, "CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(_cuda, "load_cached", fake_load_cached)
    fake_cc, fake_nvcc = tmp_path / "cc", tmp_path / "nvcc-wrapper"
    fake_cc.write_text("#!/bin/sh\n")
    fake_nvcc.write_text("#!/bin/sh\n")
    for env in ({}, {"CC": str(fake_cc)}, {"PYTORCH_NVCC": str(fake_nvcc)}):
        for var in ("CC", "PYTORCH_NVCC"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        with pytest.raises(RuntimeError, match="stop here"):
            _cuda._build()
    plain, with_cc, with_nvcc = seen
    assert plain != with_cc and str(fake_cc) in with_cc["ccbin"]
    assert plain != with_nvcc and str(fake_nvcc) in with_nvcc["nvcc"]
