"""Writing results: PNGs, saved solutions and one CSV per run.

Protocol: the module exposes ``last_result`` (a
:class:`~ilo_pl.problem.ProblemResult`, replaced each time a problem batch
finishes). :class:`ResultWriter` writes each new one; :class:`ResultCollector`
keeps them in memory (the programmatic API).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import pytorch_lightning as pl
import torch
from torch import Tensor

from ilo_pl.io import atomic_write_bytes, new_run_dir, save_image
from ilo_pl.metrics import image_metrics
from ilo_pl.problem import ProblemResult

CSV_FIELDS = ["index", "id", "measurement_loss", "true_mse", "psnr", "ssim", "best_stage", "split", "failed"]


class _ResultHook(pl.Callback):
    """Calls :meth:`handle` once for every new ``pl_module.last_result``."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: Optional[int] = None

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        result = getattr(pl_module, "last_result", None)
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
    """Write each problem's outputs into a new run folder.

    Per problem ``<id>``: ``<id>_reconstruction.png`` (mapped linearly from
    ``[-1, 1]`` to ``[0, 255]``), ``<id>_observation.png`` (when the
    observation is an image), ``<id>_target.png`` (when ground truth is
    known), ``<id>_grid.png`` (observation | reconstruction | target) and
    ``<id>_solution.pt`` (the variables that regenerate the reconstruction,
    see :func:`ilo_pl.solutions.regenerate`). One ``results.csv`` per run.
    Every file is written atomically.

    Args:
        output_dir: where run folders are created (``<output_dir>/run_NNN``);
            an earlier run's folder is never reused unless ``run_dir`` names it.
        run_dir: write into this existing folder instead (resuming a run).
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

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if self.run_dir is None:
            path = str(new_run_dir(self.output_dir)) if trainer.is_global_zero else None
            self.run_dir = Path(trainer.strategy.broadcast(path))
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def csv_path(self) -> Path:
        """This rank's CSV (rank 0: ``results.csv``; others ``results.rank<N>.csv``, merged at the end)."""
        return self.run_dir / "results.csv"

    def handle(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", result: ProblemResult) -> None:
        batch = result.batch
        metrics = image_metrics(result.images, batch.target.cpu()) if batch.target is not None else None
        obs = batch.observation.detach().float().cpu()
        for b, pid in enumerate(batch.ids):
            rec = result.images[b]
            save_image(rec, self.run_dir / f"{pid}_reconstruction.png")
            panels = [rec]
            obs_img = _observation_image(obs[b], rec)
            if obs_img is not None:
                save_image(obs_img, self.run_dir / f"{pid}_observation.png")
                panels.insert(0, obs_img)
            if batch.target is not None:
                save_image(batch.target[b].cpu(), self.run_dir / f"{pid}_target.png")
                panels.append(batch.target[b].cpu())
            if self.save_grid:
                save_image(torch.cat(panels, dim=2), self.run_dir / f"{pid}_grid.png")
            sol = result.solutions[b]
            if self.save_solutions:
                from ilo_pl.solutions import save_solution

                save_solution(self.run_dir / f"{pid}_solution.pt", sol, pl_module.generator, rec)
            row = {
                "index": batch.indices[b] if batch.indices else "",
                "id": pid,
                "measurement_loss": float(result.measurement_loss[b]),
                "true_mse": float(metrics["true_mse"][b]) if metrics else "",
                "psnr": float(metrics["psnr"][b]) if metrics else "",
                "ssim": float(metrics["ssim"][b]) if metrics else "",
                "best_stage": sol.stage,
                "split": sol.split,
                "failed": result.failed[b] or "",
            }
            self.rows.append(row)
        self._write_csv(trainer)

    def _write_csv(self, trainer: "pl.Trainer") -> None:
        name = "results.csv" if trainer.world_size == 1 else f"results.rank{trainer.global_rank}.csv"
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_bytes(self.run_dir / name, buf.getvalue().encode())

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.world_size > 1:
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                merge_csvs(self.run_dir)


def merge_csvs(run_dir: Path) -> Path:
    """Merge ``results.csv`` and the per-rank CSVs of ``run_dir`` into ``results.csv``, sorted by index."""
    rows: Dict[str, Dict[str, str]] = {}
    for path in sorted(run_dir.glob("results*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows[row["id"]] = row
    ordered = sorted(rows.values(), key=lambda r: (int(r["index"]) if r["index"] else 0, r["id"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(ordered)
    atomic_write_bytes(run_dir / "results.csv", buf.getvalue().encode())
    for path in run_dir.glob("results.rank*.csv"):
        path.unlink()
    return run_dir / "results.csv"


def _observation_image(y: Tensor, like: Tensor) -> Optional[Tensor]:
    """The observation as a picture of the image's size, or ``None`` if it is not an image."""
    if y.dim() != 3 or y.shape[0] != like.shape[0]:
        return None
    if y.shape[-2:] != like.shape[-2:]:  # low resolution: nearest-neighbour upscale for viewing
        return torch.nn.functional.interpolate(y[None], size=like.shape[-2:], mode="nearest")[0]
    return y
