"""Resuming a run: find the problems an earlier (killed) run finished, and leave them out.

A problem is *finished* when its ``<id>_solution.pt`` exists and loads and
its ``results.csv`` row is known. :class:`~ilo_pl.callbacks.ResultWriter`
writes each problem's files in this order, every one atomically (temporary
file, then rename): the PNGs, then the solution (which also holds the
problem's CSV row), then ``results.csv``. So

* a killed run leaves whole files only (plus stray ``.*.tmp`` files, removed
  here);
* the solution's presence means every output of that problem is complete;
  PNGs without a solution belong to an unfinished problem and are rewritten;
* a CSV that fell behind (killed between the solution and the CSV, or
  per-rank CSVs of a multi-process run never merged) is rebuilt from the CSVs
  and the rows saved in the solutions.

With ``save_solutions=False`` the CSV row alone marks a problem finished (it
is written after all the problem's PNGs).

:func:`scan_run` reads a run folder; :func:`prepare_resume` also cleans it
and rewrites ``results.csv``; :class:`~ilo_pl.callbacks.ResultWriter` calls
it on rank 0 before the data loader is built and puts the finished indices in
the data module's ``skip`` set.

A solution or CSV row found under a problem's id counts only if it records
that problem's index (and id); one recorded for another problem (a folder
written under an older ilo-pl's ids) leaves the problem unfinished, with a
warning naming the file, which is kept under another name.

What a resumed run must find unchanged is recorded and compared by
:mod:`ilo_pl.manifest`.
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ilo_pl.io import atomic_write_bytes

log = logging.getLogger(__name__)

#: Columns that judge a result against its start image (classifier guidance; empty for
#: other tasks): see :meth:`ilo_pl.operators.base.Operator.start_report`.
START_FIELDS = ["target_prob_start", "target_prob", "start_mse"]

#: Columns of ``results.csv`` (the writer's and the resume's common format). ``true_mse``,
#: ``psnr``, ``ssim`` and ``stlpips`` are empty for problems without ground truth; the start
#: columns, then ``stlpips`` (ST-LPIPS, AlexNet: :func:`ilo_pl.metrics.stlpips`; not the
#: paper's LPIPS) and ``restart`` (the winning restart, :mod:`ilo_pl.modules.restarts`; ``0``
#: in rows written before it, which used one start: a resume fills it in) and ``averaged`` (the
#: restarts averaged into the image, space-separated, ``restart_average``; empty when it is one
#: restart's own) come last, so the earlier columns keep their places.
CSV_FIELDS = (["index", "id", "measurement_loss", "true_mse", "psnr", "ssim", "best_stage", "split", "failed"]
              + START_FIELDS + ["stlpips", "restart", "averaged"])


@dataclass
class RunScan:
    """What an earlier run in a folder finished.

    Attributes:
        finished: indices of finished problems.
        rows: their CSV rows, by index (sorted when iterated via :meth:`ordered_rows`).
        unreadable: solution files that exist but do not load (re-solved).
        mismatched: ``(file, why)`` for a solution or CSV row found under a
            problem's id but recorded for another problem (another index or
            id, e.g. a folder written under an older ilo-pl's ids); those
            problems are unfinished (solved again).
    """

    finished: List[int] = field(default_factory=list)
    rows: Dict[int, Dict[str, str]] = field(default_factory=dict)
    unreadable: List[Path] = field(default_factory=list)
    mismatched: List[Tuple[Path, str]] = field(default_factory=list)

    def ordered_rows(self) -> List[Dict[str, str]]:
        """The finished problems' rows, by index."""
        return [self.rows[i] for i in sorted(self.rows)]


def read_csv_rows(run_dir: Union[str, Path]) -> Dict[str, Dict[str, str]]:
    """Every row of ``results.csv`` and of left-over per-rank CSVs, by problem id (later files win)."""
    rows: Dict[str, Dict[str, str]] = {}
    for path in sorted(Path(run_dir).glob("results*.csv")):
        try:
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("id"):
                        rows[row["id"]] = row
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            warnings.warn(f"ignoring unreadable {path} ({exc}); its rows are rebuilt from the solutions", stacklevel=2)
    return rows


def _recorded_index(value: object) -> Optional[int]:
    """A recorded problem index (an int, or a CSV cell), or ``None`` when none is recorded."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value if value is not None else "").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def scan_run(run_dir: Union[str, Path], names: Sequence[str], require_solution: bool = True) -> RunScan:
    """Which of the problems ``names`` (indexed by position) a run folder holds finished.

    A solution or CSV row counts for problem ``i`` only if what it records
    matches: the index a solution stores (when not ``None``) and the id of
    its saved row must be ``i`` and ``names[i]``, and a CSV row's index (when
    set) must be ``i``. Else it belongs to another problem (e.g. the folder
    was written under an older ilo-pl's ids, where another file had this id):
    the problem is unfinished and the file is listed in ``mismatched``.

    Args:
        run_dir: the run folder.
        names: the problem ids, ``names[i]`` for problem ``i``.
        require_solution: a problem is finished only with a loadable
            ``<id>_solution.pt`` (``False``: the CSV row alone suffices, for
            runs that do not save solutions).
    """
    from ilo_pl.solutions import load_solution

    run_dir = Path(run_dir)
    scan = RunScan()
    if not run_dir.is_dir():
        return scan
    csv_rows = read_csv_rows(run_dir)
    for i, name in enumerate(names):
        row = csv_rows.get(name)
        row_at = None if row is None else _recorded_index(row.get("index"))
        row_mismatch = row_at is not None and row_at != i
        if require_solution:
            path = run_dir / f"{name}_solution.pt"
            if not path.is_file():
                continue
            try:
                sol = load_solution(path)
            except ValueError:
                scan.unreadable.append(path)
                continue
            saved_row = sol.get("row") if isinstance(sol.get("row"), dict) else None
            at = _recorded_index(sol.get("index"))
            saved_id = None if saved_row is None else saved_row.get("id")
            if at is not None and at != i:
                scan.mismatched.append((path, f"it holds the result of problem index {at}, not of {name!r} (index {i})"))
                continue
            if saved_id not in (None, "") and str(saved_id) != name:
                scan.mismatched.append((path, f"it holds the result of {saved_id!r}, not of {name!r} (index {i})"))
                continue
            if (row is None or row_mismatch) and saved_row is not None:
                # The solution is what marks the problem finished; its own row wins over a stale CSV's.
                row, row_mismatch = {k: "" if v is None else str(v) for k, v in saved_row.items()}, False
        if row_mismatch:
            scan.mismatched.append(
                (run_dir / "results.csv", f"its row for {name!r} records problem index {row_at}, not {i}")
            )
            continue
        if row is None:
            continue
        row = {k: row.get(k, "") for k in CSV_FIELDS}
        row["index"], row["id"] = str(i), name
        if row["restart"] == "":
            row["restart"] = "0"  # a row from before restarts: those solves used one start (restart 0)
        scan.finished.append(i)
        scan.rows[i] = row
    return scan


def has_results(run_dir: Union[str, Path]) -> bool:
    """Whether ``run_dir`` holds any problem's result (a solution file or a CSV row), whatever its id."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    if any(p.is_file() for p in run_dir.glob("*_solution.pt")):
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unreadable CSV is reported when the folder is scanned
        return bool(read_csv_rows(run_dir))


def remove_partial_files(run_dir: Union[str, Path]) -> List[Path]:
    """Delete the temporary files a killed run left (``.<name>.<random>.tmp``); returns them."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_csv(path: Union[str, Path], rows: Sequence[Dict[str, object]]) -> None:
    """Write ``rows`` as a ``results.csv`` atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def prepare_resume(run_dir: Union[str, Path], names: Sequence[str], require_solution: bool = True) -> RunScan:
    """Get a run folder ready to be resumed; returns what it holds finished.

    Removes temporary files, merges left-over per-rank CSVs and rows kept only
    in solutions into ``results.csv`` (finished problems only, by index), and
    warns about unreadable solutions (those problems are solved again) and
    about solutions or rows recorded for another problem (``mismatched``:
    solved again; such a solution file is first renamed to
    ``<id>_solution.pt.index<k>.bak``, so solving the problem does not
    overwrite the other problem's result). Call it on one process only
    (rank 0), before any problem is solved.
    """
    run_dir = Path(run_dir)
    scan = RunScan()
    if not run_dir.is_dir():
        return scan
    removed = remove_partial_files(run_dir)
    scan = scan_run(run_dir, names, require_solution)
    for path in scan.unreadable:
        warnings.warn(f"{path} does not load (a damaged file); that problem is solved again", stacklevel=2)
    for path, why in scan.mismatched:
        kept = ""
        if path.name.endswith("_solution.pt"):
            aside = _aside_name(path)
            path.rename(aside)
            kept = f"; the file is kept as {aside.name}"
        warnings.warn(
            f"{path} does not belong to this problem: {why} (a folder written under an older ilo-pl's "
            f"problem ids?), so that problem is solved again{kept}",
            stacklevel=2,
        )
    had_csv = any(run_dir.glob("results*.csv"))
    if scan.finished or had_csv:
        write_csv(run_dir / "results.csv", scan.ordered_rows())
        for path in run_dir.glob("results.rank*.csv"):
            path.unlink()
    if scan.finished or removed:
        log.info("resuming %s: %d of %d problems already finished", run_dir, len(scan.finished), len(names))
    return scan


def _aside_name(path: Path) -> Path:
    """A free name beside ``path`` for a solution that belongs to another problem (never an output name)."""
    from ilo_pl.solutions import load_solution

    try:
        index = _recorded_index(load_solution(path).get("index"))
    except ValueError:
        index = None
    base = f"{path.name}.index{index}" if index is not None else f"{path.name}.other"
    aside = path.with_name(base + ".bak")
    k = 2
    while aside.exists():
        aside, k = path.with_name(f"{base}.{k}.bak"), k + 1
    return aside


