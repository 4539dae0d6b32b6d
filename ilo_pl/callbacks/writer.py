"""Writing results: PNGs, saved solutions and one CSV per run.

Protocol: the module exposes ``last_result`` (a
:class:`~ilo_pl.problem.ProblemResult`, replaced each time a problem batch
finishes). :class:`ResultWriter` writes each new one; :class:`ResultCollector`
keeps them in memory (the programmatic API).
"""

from __future__ import annotations

import csv
import io
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
from torch import Tensor

from ilo_pl.callbacks.protocols import ResultProducing, require
from ilo_pl.io import atomic_write_bytes, ensure_writable_dir, new_run_dir, save_image
from ilo_pl.metrics import image_metrics
from ilo_pl.operators.base import LinearOperator, Operator
from ilo_pl.problem import ProblemResult, check_problem_ids
from ilo_pl.manifest import MANIFEST, check_manifest, make_manifest, read_manifest, write_manifest
from ilo_pl.resume import CSV_FIELDS, START_FIELDS, has_results, prepare_resume, read_csv_rows, write_csv

__all__ = ["CSV_FIELDS", "ResultCollector", "ResultWriter", "merge_csvs", "observation_pictures"]

#: The run folder's list of input files the data left out (unreadable, NaN pixels): ``file,reason``.
SKIPPED_CSV = "skipped_inputs.csv"


class _ResultHook(pl.Callback):
    """Calls :meth:`handle` once for every new ``pl_module.last_result``."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: Optional[int] = None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        require(pl_module, ResultProducing, self)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        result = pl_module.last_result
        if result is not None and id(result) != self._seen:
            self._seen = id(result)
            self.handle(trainer, pl_module, result)

    def handle(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", result: ProblemResult) -> None:  # pragma: no cover
        raise NotImplementedError


class ResultCollector(_ResultHook):
    """Keeps every :class:`~ilo_pl.problem.ProblemResult` in :attr:`results`."""

    def __init__(self) -> None:
        super().__init__()
        self.results: List[ProblemResult] = []

    def handle(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", result: ProblemResult) -> None:
        self.results.append(result)


class ResultWriter(_ResultHook):
    """Write each problem's outputs into a run folder, and resume a killed run there.

    Per problem ``<id>``, in this order: ``<id>_reconstruction.png`` (mapped
    linearly from ``[-1, 1]`` to ``[0, 255]``), the observation's picture (see
    :func:`observation_pictures`): ``<id>_observation.png`` when the
    observation is an image, ``<id>_observation_backprojection.png`` (``A^T
    y``) for measurement vectors of a linear operator (compressed sensing),
    none for class labels; ``<id>_start.png`` for tasks judged against their
    start image (classifier guidance, see
    :meth:`~ilo_pl.operators.base.Operator.start_report`), ``<id>_target.png``
    (when ground truth is known), ``<id>_grid.png`` (those images side by
    side: observation | reconstruction | target, or start | reconstruction),
    then ``<id>_solution.pt`` (the variables that regenerate the
    reconstruction, see :func:`ilo_pl.solutions.regenerate`, and the
    problem's CSV row) and last the run's ``results.csv``: ``true_mse``,
    ``psnr`` and ``ssim`` against the ground truth (empty without one), and
    for tasks judged against their start ``target_prob_start``,
    ``target_prob`` and ``start_mse`` (empty for the others), and ``restart``
    (the problem's winning restart, :mod:`ilo_pl.modules.restarts`) and ``averaged``
    (with ``restart_average``: the restarts whose mean the image is). Every file is
    written atomically, so the solution's presence means the problem's
    outputs are complete.

    Input files the data left out (unreadable, NaN pixels: the problem
    source's ``skipped``) are listed in the run folder's
    ``skipped_inputs.csv`` (``file,reason``) and again on stderr when the
    fit ends.

    Resuming: when the run folder already holds finished problems (see
    :mod:`ilo_pl.resume`), they are left out of this run (the data module's
    ``skip`` set) and their CSV rows are kept. The folder's ``run_manifest.json``
    (see :func:`ilo_pl.manifest.make_manifest`) records what results depend on
    besides the config: trainer and torch settings, the generator's identity,
    the module's and data module's result-changing settings and the data's
    fingerprint; resuming a folder that holds results with any of them
    different is refused with a ``ValueError`` naming the differences (a
    folder without results yet just gets this run's manifest).

    Problem ids name the files; an id that is not a safe file-name prefix
    (see :func:`~ilo_pl.problem.check_problem_ids`) or that repeats is refused.

    Multi-process runs (:class:`~ilo_pl.strategy.ILOStrategy`): rank 0's
    folder is broadcast to all ranks; each rank writes its own problems and
    ``results.rank<N>.csv``; rank 0 merges them into ``results.csv`` at the end.

    Without a live progress bar (batch jobs, ranks other than 0) each finished
    problem batch is logged as ``ilo-pl: rank R: finished <ids>`` on stderr.

    Args:
        output_dir: where run folders are created (``<output_dir>/run_NNN``);
            an earlier run's folder is never reused unless ``run_dir`` names it.
        run_dir: write into this folder instead; an existing run folder is
            resumed.
        save_grid: also write the side-by-side grid.
        save_solutions: also write the ``.pt`` solutions.
    """

    def __init__(
        self,
        output_dir: Union[str, Path] = "runs",
        run_dir: Optional[Union[str, Path]] = None,
        save_grid: bool = True,
        save_solutions: bool = True,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.run_dir: Optional[Path] = Path(run_dir) if run_dir is not None else None
        self.save_grid = save_grid
        self.save_solutions = save_solutions
        self.rows: List[Dict[str, Any]] = []
        #: Indices of problems an earlier run in this folder had finished.
        self.resumed: List[int] = []
        #: Ids of the problems this run wrote (this rank's).
        self.written: List[str] = []
        #: ``(file, reason)`` of each input file the data left out (rank 0; ``skipped_inputs.csv``).
        self.skipped: List[Tuple[str, str]] = []

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # the protocol check, before a run folder is made
        if trainer.is_global_zero:
            self.open_run_dir()
        if trainer.world_size > 1:
            # Every rank writes into rank 0's folder (children may not know it yet).
            self.run_dir = Path(trainer.strategy.broadcast(str(self.run_dir) if trainer.is_global_zero else None))
        self.rows, self.written = [], []
        self._resume(trainer)
        if trainer.is_global_zero:
            self._record_skipped(trainer)

    def open_run_dir(self) -> Path:
        """Create the run folder: ``run_dir`` if given (an existing one only if ilo-pl made it), else the
        next free ``run_NNN``; see :func:`make_run_dir`."""
        self.run_dir = make_run_dir(self.run_dir if self.run_dir is not None else new_run_dir(self.output_dir))
        return self.run_dir

    def _resume(self, trainer: "pl.Trainer") -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "skip") or getattr(dm, "source", None) is None:
            return  # problems not from a data module: nothing to match against
        payload = None
        error: Optional[BaseException] = None
        if trainer.is_global_zero:
            try:
                payload = self._scan(trainer, dm)
            except Exception as exc:  # noqa: BLE001 - any failure must reach every rank (a rank left waiting hangs)
                error = exc
                payload = ("error", type(exc).__name__, str(exc))
        if trainer.world_size > 1:
            payload = trainer.strategy.broadcast(payload)
        if error is not None:
            raise error  # rank 0: the original exception, with its type and traceback
        if isinstance(payload, tuple) and len(payload) == 3 and payload[0] == "error":
            raise _rank0_error(payload[1], payload[2])
        finished, rows = payload
        self.resumed = list(finished)
        dm.skip |= set(finished)
        if trainer.world_size == 1:
            self.rows = list(rows)  # rank 0's results.csv keeps the earlier rows
        if finished and trainer.is_global_zero:
            print(
                f"ilo-pl: resuming {self.run_dir}: {len(finished)} problem(s) already finished are skipped",
                file=sys.stderr,
                flush=True,
            )

    def _scan(self, trainer: "pl.Trainer", dm: Any) -> tuple:
        """Rank 0: check the folder may be resumed with this run, clean it, and list its finished problems.

        Raises:
            ValueError: repeated or unsafe problem ids, or a folder whose
                recorded settings or problems differ from this run's.
        """
        n = len(dm.source)
        all_ids = check_problem_ids((dm.source.name(i) for i in range(n)), f"the problem ids of {type(dm.source).__name__}")
        if getattr(dm, "limit", None) is not None:
            n = min(n, int(dm.limit))
        manifest = make_manifest(trainer, dm.source, dm)
        # Checked before anything in the folder is touched. A folder without any result yet
        # cannot mix results: its manifest (if any) is simply replaced by this run's.
        had_results = has_results(self.run_dir)
        why = check_manifest(self.run_dir, manifest, finished=had_results)
        if why is not None:
            raise ValueError(why)
        old = read_manifest(self.run_dir) if had_results else None
        scan = prepare_resume(self.run_dir, all_ids[:n], self.save_solutions)
        if old is None and scan.finished:
            warnings.warn(
                f"{self.run_dir} has no {MANIFEST} (written by an older ilo-pl): cannot check that its "
                "settings and data are this run's; recording this run's",
                stacklevel=2,
            )
        if old != manifest:  # new, or accepted with notes (unrecorded sections, touched files): record this run's
            write_manifest(self.run_dir, manifest)
        return scan.finished, scan.ordered_rows()

    def _record_skipped(self, trainer: "pl.Trainer") -> None:
        """Rank 0: list the input files the problem source left out (``skipped_inputs.csv``: file, reason)."""
        source = getattr(trainer.datamodule, "source", None) if trainer.datamodule is not None else None
        self.skipped = [(str(p), str(why)) for p, why in (getattr(source, "skipped", None) or [])]
        path = self.run_dir / SKIPPED_CSV
        if self.skipped or path.is_file():  # (an earlier run's list in this folder is replaced)
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["file", "reason"])
            w.writerows(self.skipped)
            atomic_write_bytes(path, buf.getvalue().encode())

    @property
    def csv_path(self) -> Path:
        """The run's merged CSV."""
        return self.run_dir / "results.csv"

    def handle(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", result: ProblemResult) -> None:
        batch = result.batch
        metrics = image_metrics(result.images, batch.target.cpu(), perceptual=True) if batch.target is not None else None
        pictures, picture_name = observation_pictures(batch.operator, batch.observation, result.images)
        start, report = _start_report(pl_module, result)
        # Ids become file names: never let one escape the run folder (ProblemBatch checks too;
        # a module may build its results some other way).
        check_problem_ids(batch.ids)
        for b, pid in enumerate(batch.ids):
            rec = result.images[b]
            save_image(rec, self.run_dir / f"{pid}_reconstruction.png")
            panels = [rec]
            if pictures is not None:
                save_image(pictures[b], self.run_dir / f"{pid}_{picture_name}.png")
                panels.insert(0, pictures[b])
            if start is not None:  # judged against its start (no ground truth): start | result
                save_image(start[b], self.run_dir / f"{pid}_start.png")
                panels.insert(0, start[b])
            if batch.target is not None:
                save_image(batch.target[b].cpu(), self.run_dir / f"{pid}_target.png")
                panels.append(batch.target[b].cpu())
            if self.save_grid:
                save_image(torch.cat(panels, dim=2), self.run_dir / f"{pid}_grid.png")
            sol = result.solutions[b]
            index = batch.indices[b] if batch.indices else None
            row = {
                "index": "" if index is None else index,
                "id": pid,
                "measurement_loss": float(result.measurement_loss[b]),
                "true_mse": float(metrics["true_mse"][b]) if metrics else "",
                "psnr": float(metrics["psnr"][b]) if metrics else "",
                "ssim": float(metrics["ssim"][b]) if metrics else "",
                "stlpips": float(metrics["stlpips"][b]) if metrics and "stlpips" in metrics else "",
                "best_stage": sol.stage,
                "split": sol.split,
                "failed": result.failed[b] or "",
                "restart": sol.restart,
                "averaged": " ".join(str(r) for r in sol.averaged),
            }
            for key in START_FIELDS:  # (an operator's other keys would not reach the CSV)
                row[key] = float(report[key][b]) if key in report else ""
            if self.save_solutions:
                from ilo_pl.solutions import save_solution

                # Written after the PNGs: its presence marks the problem finished (resume).
                save_solution(self.run_dir / f"{pid}_solution.pt", sol, pl_module.generator, rec, index=index, row=row)
            self.rows.append(row)
            self.written.append(pid)
        self._write_csv(trainer)
        bar = trainer.progress_bar_callback
        # No live bar (batch jobs, other ranks): one line per problem batch in the log.
        if bar is None or not getattr(bar, "is_enabled", False):
            print(
                f"ilo-pl: rank {trainer.global_rank}: finished {', '.join(batch.ids)} "
                f"({len(self.written)} on this rank)",
                file=sys.stderr,
                flush=True,
            )

    def _write_csv(self, trainer: "pl.Trainer") -> None:
        name = "results.csv" if trainer.world_size == 1 else f"results.rank{trainer.global_rank}.csv"
        write_csv(self.run_dir / name, sorted(self.rows, key=_row_order))

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.world_size > 1:
            trainer.strategy.barrier("ilo_pl.ResultWriter.merge")
            if trainer.is_global_zero:
                merge_csvs(self.run_dir)
        if trainer.is_global_zero and self.skipped:
            # The skip warnings came before all the solving: repeat them where the run ends.
            shown = "; ".join(f"{p}: {why}" for p, why in self.skipped[:10])
            more = f"; ... ({len(self.skipped)} in all)" if len(self.skipped) > 10 else ""
            print(
                f"ilo-pl: {len(self.skipped)} input file(s) were skipped and not solved (listed in "
                f"{self.run_dir / SKIPPED_CSV}): {shown}{more}",
                file=sys.stderr,
                flush=True,
            )


def _rank0_error(type_name: str, message: str) -> Exception:
    """On ranks other than 0: rank 0's exception, as the same built-in type when there is one."""
    import builtins

    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - a built-in that takes other arguments
            pass
    return RuntimeError(f"rank 0 failed to prepare the run folder: {type_name}: {message}")


#: The file ilo-pl writes into every run folder it makes: it writes into, resumes and cleans only
#: folders that hold it (or, made before the marker existed, a ``run_manifest.json``).
RUN_MARKER = ".ilo-pl-run"


def make_run_dir(path: Union[str, Path]) -> Path:
    """Create the run folder ``path``, or take an existing one that ilo-pl made, and mark it as ilo-pl's.

    Raises:
        PermissionError: naming the folder, if it cannot be created or written.
        FileExistsError: if ``path`` holds files and ilo-pl did not make it (nothing in it is touched).
    """
    path = Path(path)
    holds_files = path.is_dir() and any(path.iterdir())
    ensure_writable_dir(path, "run folder", "--output.run_dir")
    marker = path / RUN_MARKER
    if holds_files and not marker.is_file() and not (path / MANIFEST).is_file():
        raise FileExistsError(
            f"{path} holds files and is not an ilo-pl run folder (it has no {RUN_MARKER}): ilo-pl writes, "
            "resumes and cleans only run folders it made, so that no file of yours is overwritten or "
            "deleted. Give a new or empty folder as --output.run_dir (output.run_dir), or leave it out "
            "for a new run_NNN in --output.output_dir"
        )
    if not marker.is_file():
        atomic_write_bytes(marker, b"ilo-pl run folder\n")
    return path


def merge_csvs(run_dir: Path) -> Path:
    """Merge ``results.csv`` and the per-rank CSVs of ``run_dir`` into ``results.csv``, sorted by index."""
    rows = read_csv_rows(run_dir)
    ordered = sorted(rows.values(), key=_row_order)
    write_csv(run_dir / "results.csv", ordered)
    for path in run_dir.glob("results.rank*.csv"):
        path.unlink()
    return run_dir / "results.csv"


def _row_order(row: Dict[str, Any]) -> tuple:
    index = str(row.get("index", ""))
    return (int(index) if index.lstrip("-").isdigit() else -1, str(row.get("id", "")))


def _observation_image(y: Tensor, like: Tensor) -> Optional[Tensor]:
    """The observation as a picture of the image's size, or ``None`` if it is not an image."""
    if y.dim() != 3 or y.shape[0] != like.shape[0]:
        return None
    if y.shape[-2:] != like.shape[-2:]:  # low resolution: nearest-neighbour upscale for viewing
        return torch.nn.functional.interpolate(y[None], size=like.shape[-2:], mode="nearest")[0]
    return y


def observation_pictures(operator: Any, y: Tensor, images: Tensor) -> Tuple[Optional[Tensor], str]:
    """The observations of a problem batch as pictures, and the name of their files.

    * an observation that is an image (of any resolution): itself, upscaled
      (nearest neighbour) to the images' size: ``"observation"``;
    * else, for a linear operator with an adjoint (compressed sensing): the
      back-projection ``A^T y``, an image of the solution's shape:
      ``"observation_backprojection"``. The compressed-sensing matrices have
      ``E[A^T A] = I``, so it is an unbiased but noisy picture of the image
      (at small ``m/n`` mostly noise);
    * else (class labels): ``(None, "")``.

    Args:
        operator: the batch's operator.
        y: the observations ``[B, ...]``.
        images: the results ``[B, C, H, W]`` (their size; on the CPU).

    Returns:
        ``(pictures [B, C, H, W] on the CPU or None, file-name suffix)``.
    """
    obs = y.detach().float().cpu()
    pics = [_observation_image(obs[b], images[b]) for b in range(images.shape[0])]
    if all(p is not None for p in pics):
        return torch.stack(pics), "observation"
    if isinstance(operator, LinearOperator) and y.is_floating_point():
        try:
            with torch.no_grad():
                back = operator.A_adjoint(y.detach()).float().cpu()
        except NotImplementedError:
            return None, ""
        if tuple(back.shape) == tuple(images.shape):
            return back, "observation_backprojection"
    return None, ""


def _start_report(pl_module: "pl.LightningModule", result: ProblemResult) -> Tuple[Optional[Tensor], Dict[str, Tensor]]:
    """``(start images [B, C, H, W] on the CPU, the operator's start report)``, or ``(None, {})``.

    Only for operators judged against the start (their ``start_report`` is
    not ``None``) and results that recorded their start.
    """
    op = result.batch.operator
    generator = getattr(pl_module, "generator", None)
    # Only operators that override start_report want it: no start render for the other tasks.
    if getattr(type(op), "start_report", Operator.start_report) is Operator.start_report:
        return None, {}
    if result.start is None or generator is None:
        return None, {}
    from ilo_pl.solutions import regenerate

    # Rendered like a saved solution is regenerated (float32, the generator's device).
    start = regenerate({"state": result.start.state, "split": result.start.split}, generator, check_identity=False)
    report = op.start_report(start, result.images, result.batch.observation)
    if report is None:
        return None, {}
    return start.float().cpu(), {k: v.detach().float().cpu() for k, v in report.items()}
