"""How long the ``ilo-pl`` command takes to answer: help, and the errors of the first minutes.

Usage::

    python -m benchmarks.startup [--runs N] [--label after] [--pythonpath DIR] [--out CSV]

Each case runs the installed console script (``ilo-pl`` beside this Python)
as a fresh process, ``--runs`` times; the CSV row holds the median, the
fastest and the slowest wall time, the exit status and which ``ilo_pl`` ran.
``--pythonpath DIR`` runs another checkout's ``ilo_pl`` with the same
environment (``PYTHONPATH`` comes before the editable install), e.g. an
earlier commit checked out with ``git worktree add /tmp/base <commit>``;
``--label`` names the rows, and a run replaces only the rows of its label in
``benchmarks/results/startup.csv``. ``import torch`` alone is measured too, for
scale: the answers that need no torch should take a small part of it.

The cases: ``ilo-pl --help``, ``ilo-pl fit --help``, ``ilo-pl regenerate
--help``, ``fit`` with a config file that does not exist, and ``fit`` with a
config that misspells a key (``model.stagez``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.startup`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIELDS = ["label", "case", "command", "runs", "median_s", "min_s", "max_s", "exit_status", "ilo_pl", "cpus",
          "load_1min"]


def cases(tmp: Path) -> List[Tuple[str, List[str]]]:
    """``(name, arguments of ilo-pl)``; ``import_torch`` is ``python -c "import torch"``."""
    box = ROOT / "configs" / "inpainting_box.yaml"
    typo = tmp / "typo.yaml"
    typo.write_text("model:\n  stagez: 3\n")
    return [
        ("help", ["--help"]),
        ("fit_help", ["fit", "--help"]),
        ("regenerate_help", ["regenerate", "--help"]),
        ("missing_config", ["fit", "--config", str(tmp / "missing.yaml")]),
        ("unknown_key", ["fit", "--config", str(box), "--config", str(typo)]),
        ("import_torch", []),
    ]


def console_script() -> List[str]:
    """The installed ``ilo-pl`` (beside this Python), or ``python -m ilo_pl.cli`` if there is none."""
    script = Path(sys.executable).parent / "ilo-pl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ilo_pl.cli"]


def time_once(cmd: Sequence[str], env: Dict[str, str], cwd: Path, timeout: float) -> Tuple[float, int]:
    """Wall seconds and exit status of one fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=timeout)
    return time.perf_counter() - t0, proc.returncode


def which_ilo_pl(env: Dict[str, str], cwd: Path) -> str:
    """The ``ilo_pl`` package these runs import (to tell a baseline from the working tree)."""
    out = subprocess.run([sys.executable, "-c", "import ilo_pl, os; print(os.path.dirname(ilo_pl.__file__))"],
                         env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return str(Path(out.stdout.strip()).parent)


def write_rows(path: Path, label: str, rows: List[Dict[str, object]]) -> None:
    """Replace ``label``'s rows of the CSV at ``path`` with ``rows`` (other labels are kept)."""
    kept: List[Dict[str, str]] = []
    if path.is_file():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r.get("label") != label]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(kept)
        w.writerows(rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per case (default 5; the median is kept)")
    parser.add_argument("--label", default="working tree", help="names this run's rows in the CSV")
    parser.add_argument("--pythonpath", help="put this checkout first on PYTHONPATH (run its ilo_pl)")
    parser.add_argument("--cases", nargs="+", help="only these cases (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take")
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.csv")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.pythonpath).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    base = console_script()
    rows: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)  # the working directory too: no module of the checkout is importable by accident
        source = which_ilo_pl(env, tmp)
        print(f"ilo_pl from {source}; {args.runs} runs per case", file=sys.stderr)
        for name, extra in cases(tmp):
            if args.cases and name not in args.cases:
                continue
            cmd = [sys.executable, "-c", "import torch"] if name == "import_torch" else base + extra
            load = os.getloadavg()[0]
            times, codes = [], set()
            for _ in range(args.runs):
                seconds, code = time_once(cmd, env, tmp, args.timeout)
                times.append(seconds)
                codes.add(code)
            shown = "python -c 'import torch'" if name == "import_torch" else " ".join(["ilo-pl", *extra]).replace(str(tmp) + "/", "").replace(str(ROOT) + "/", "")
            row = {"label": args.label, "case": name, "command": shown, "runs": args.runs,
                   "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                   "max_s": round(max(times), 3), "exit_status": "/".join(map(str, sorted(codes))),
                   "ilo_pl": source, "cpus": os.cpu_count(), "load_1min": round(load, 2)}
            rows.append(row)
            print(f"{name:16s} median {row['median_s']:7.2f} s  (min {row['min_s']:.2f}, max {row['max_s']:.2f}, "
                  f"exit {row['exit_status']})  {shown}", file=sys.stderr, flush=True)
    write_rows(args.out, args.label, rows)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
