"""ilo-pl's allocator settings (:mod:`ilo_pl.malloc`): when they apply, and the CLI's use of them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ilo_pl import malloc


def test_system_leaves_the_allocator_alone() -> None:
    assert malloc.keep_freed_memory({"ILO_PL_MALLOC": "system"}) is False


def test_a_preloaded_allocator_is_left_alone() -> None:
    for lib in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "libtcmalloc_minimal.so.4"):
        assert malloc.keep_freed_memory({"LD_PRELOAD": lib}) is False


def test_a_bad_setting_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="ILO_PL_MALLOC='fast'.*'keep'.*'system'"):
        malloc.keep_freed_memory({"ILO_PL_MALLOC": "fast"})


@pytest.mark.skipif(malloc._glibc() is None, reason="needs glibc")
def test_keep_sets_glibc_in_a_fresh_process() -> None:
    """Applied in a child: the setting is process-wide, and this test process stays as it was."""
    code = (
        "import ctypes, ctypes.util\n"
        "from ilo_pl.malloc import keep_freed_memory\n"
        "assert keep_freed_memory({}) is True and keep_freed_memory({}) is True\n"
        # with mmap off, a 64 MiB block comes from the heap: sbrk(0) moves past it
        "libc = ctypes.CDLL(None); libc.sbrk.restype = ctypes.c_void_p\n"
        "before = libc.sbrk(0); libc.malloc.restype = ctypes.c_void_p\n"
        "p = libc.malloc(64 << 20); after = libc.sbrk(0)\n"
        "print(after - before >= 64 << 20)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_cli_refuses_a_bad_setting(monkeypatch, capsys) -> None:
    from ilo_pl import cli

    monkeypatch.setenv("ILO_PL_MALLOC", "fast")
    with pytest.raises(SystemExit) as exc:
        cli.main(["regenerate", "--help"])
    assert exc.value.code == 2
    assert "ILO_PL_MALLOC='fast'" in capsys.readouterr().err
