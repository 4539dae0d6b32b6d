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

A resumed run must produce what the first run would have: the writer records
``run_manifest.json`` (:data:`MANIFEST`) when it first uses a folder -- the
effective settings that change results (:func:`result_settings`: precision,
gradient accumulation and clipping, deterministic algorithms, accelerator
kind, matmul precision) and the problem source's fingerprint (for a folder of
images: every file's name, size and SHA-1) -- and refuses to resume when
either differs (:func:`manifest_differences`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ilo_pl.io import atomic_write_bytes

log = logging.getLogger(__name__)

#: Columns of ``results.csv`` (the writer's and the resume's common format).
CSV_FIELDS = ["index", "id", "measurement_loss", "true_mse", "psnr", "ssim", "best_stage", "split", "failed"]


@dataclass
class RunScan:
    """What an earlier run in a folder finished.

    Attributes:
        finished: indices of finished problems.
        rows: their CSV rows, by index (sorted when iterated via :meth:`ordered_rows`).
        unreadable: solution files that exist but do not load (re-solved).
    """

    finished: List[int] = field(default_factory=list)
    rows: Dict[int, Dict[str, str]] = field(default_factory=dict)
    unreadable: List[Path] = field(default_factory=list)

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


def scan_run(run_dir: Union[str, Path], names: Sequence[str], require_solution: bool = True) -> RunScan:
    """Which of the problems ``names`` (indexed by position) a run folder holds finished.

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
        if require_solution:
            path = run_dir / f"{name}_solution.pt"
            if not path.is_file():
                continue
            try:
                sol = load_solution(path)
            except ValueError:
                scan.unreadable.append(path)
                continue
            if row is None and isinstance(sol.get("row"), dict):
                row = {k: "" if v is None else str(v) for k, v in sol["row"].items()}
        if row is None:
            continue
        row = {k: row.get(k, "") for k in CSV_FIELDS}
        row["index"], row["id"] = str(i), name
        scan.finished.append(i)
        scan.rows[i] = row
    return scan


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
    warns about unreadable solutions (those problems are solved again). Call
    it on one process only (rank 0), before any problem is solved.
    """
    run_dir = Path(run_dir)
    scan = RunScan()
    if not run_dir.is_dir():
        return scan
    removed = remove_partial_files(run_dir)
    scan = scan_run(run_dir, names, require_solution)
    for path in scan.unreadable:
        warnings.warn(f"{path} does not load (a damaged file); that problem is solved again", stacklevel=2)
    had_csv = any(run_dir.glob("results*.csv"))
    if scan.finished or had_csv:
        write_csv(run_dir / "results.csv", scan.ordered_rows())
        for path in run_dir.glob("results.rank*.csv"):
            path.unlink()
    if scan.finished or removed:
        log.info("resuming %s: %d of %d problems already finished", run_dir, len(scan.finished), len(names))
    return scan


# -- what a resumed run must find unchanged ----------------------------------------------

#: The file in a run folder that records what its results depend on besides the config.
MANIFEST = "run_manifest.json"
MANIFEST_FORMAT = "ilo-pl-run/1"


def result_settings(trainer: Any) -> Dict[str, Any]:
    """The trainer's effective settings that change results (not devices, logging or progress bars).

    Read from the live trainer and torch, not from a config, so defaults
    spelled differently (``precision: null`` vs ``32-true``) compare equal and
    a setting made outside the config counts too.
    """
    import torch

    clip = float(getattr(trainer, "gradient_clip_val", None) or 0.0)
    accel = type(trainer.accelerator).__name__
    out: Dict[str, Any] = {
        "accelerator": accel,
        "precision": str(trainer.precision),
        "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
        "gradient_clip_val": clip,
        # The algorithm only matters when clipping is on.
        "gradient_clip_algorithm": str(getattr(trainer, "gradient_clip_algorithm", None) or "norm") if clip else "",
        "deterministic": (
            "warn" if torch.is_deterministic_algorithms_warn_only_enabled() else True
        ) if torch.are_deterministic_algorithms_enabled() else False,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if accel == "CUDAAccelerator":  # these flags only act on CUDA kernels
        out["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        out["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        out["cuda_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


def make_manifest(trainer: Any, source: Any) -> Dict[str, Any]:
    """What :data:`MANIFEST` records for a run: :func:`result_settings` and ``source.fingerprint()``."""
    return {"format": MANIFEST_FORMAT, "settings": result_settings(trainer), "problems": source.fingerprint()}


def read_manifest(run_dir: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The run folder's :data:`MANIFEST`, or ``None`` if it has none.

    Raises:
        ValueError: if the file exists but is not a manifest.
    """
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path} is not readable ({exc}); the run folder is damaged: start a new run folder"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not an ilo-pl run manifest ({MANIFEST_FORMAT}); start a new run folder")
    return data


def write_manifest(run_dir: Union[str, Path], manifest: Dict[str, Any]) -> None:
    """Write :data:`MANIFEST` atomically."""
    atomic_write_bytes(Path(run_dir) / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def manifest_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """The differences between a recorded manifest and this run's, one line each (empty: none)."""
    diffs: List[str] = []
    a, b = old.get("settings") or {}, new.get("settings") or {}
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            diffs.append(f"trainer setting {key}: {a.get(key, '(unset)')!r} -> {b.get(key, '(unset)')!r}")
    pa, pb = old.get("problems") or {}, new.get("problems") or {}
    if pa != pb:
        if "files" in pa and "files" in pb:
            fa = {f["name"]: f for f in pa["files"]}
            fb = {f["name"]: f for f in pb["files"]}
            added = sorted(set(fb) - set(fa))
            removed = sorted(set(fa) - set(fb))
            changed = sorted(n for n in set(fa) & set(fb) if fa[n] != fb[n])
            for what, names in (("added", added), ("removed", removed), ("changed", changed)):
                if names:
                    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                    diffs.append(f"data folder: {what} {shown}")
        else:
            keys = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
            diffs.append(f"problems: {', '.join(keys)} differ")
    return diffs


def check_manifest(run_dir: Union[str, Path], manifest: Dict[str, Any]) -> Optional[str]:
    """Why ``run_dir`` cannot be resumed with ``manifest`` (a message naming the differences), or ``None``.

    A folder without a manifest (new, or written before manifests existed)
    passes.
    """
    old = read_manifest(run_dir)
    if old is None:
        return None
    diffs = manifest_differences(old, manifest)
    if not diffs:
        return None
    return (
        f"cannot resume {run_dir}: its results were made with other settings or problems "
        f"({'; '.join(diffs)}), so resuming would mix results that do not belong together "
        "(a changed data folder also shifts problem indices, seeds and masks). Resume with the "
        "run's own settings and data, or start a new run folder (leave out --output.run_dir / run_dir)"
    )
