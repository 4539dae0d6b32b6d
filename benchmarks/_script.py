"""Runs a benchmark given by its path (``python benchmarks/quality.py``) as its package module.

``python -m benchmarks.quality`` (from the repository root) is how a benchmark
runs. Run by path instead, the script's own folder rather than the repository
root is first on ``sys.path``, so its ``benchmarks.*`` imports would fail. In
that case (and only then) each script first calls :func:`run_as_module`, which
loads the package from this folder, leaving ``sys.path`` as it is, and runs
the script exactly as ``-m`` does.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path
from typing import NoReturn


def run_as_module(path: str) -> NoReturn:
    """Run the benchmark file ``path`` as ``python -m benchmarks.<its name>`` would, then exit."""
    here = Path(__file__).resolve().parent
    if "benchmarks" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "benchmarks", here / "__init__.py", submodule_search_locations=[str(here)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = package
        spec.loader.exec_module(package)
    # The script's `if __name__ == "__main__"` block raises SystemExit with main()'s code.
    runpy.run_module(f"benchmarks.{Path(path).stem}", run_name="__main__", alter_sys=True)
    raise SystemExit(0)
