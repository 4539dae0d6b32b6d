"""Seeing progress: a progress bar that names the problem and stage, and per-problem GIFs.

* :class:`ProblemProgressBar` (Rich) and :class:`ProblemTQDMProgressBar`:
  Lightning's progress bars with the current problem id(s), the problem's
  number among this rank's problems, the stage and the loss (the module logs
  ``loss`` every ``log_every`` steps; the bar reads it once per logged value). The ``ilo-pl`` CLI puts
  one in place of Lightning's default bar.
* :class:`OptimizationGIF`: renders the current iterate every ``N`` steps and
  writes ``<id>_progress.gif`` per problem when the problem is finished. It
  only reads the module's state (under ``no_grad``, drawing no random
  numbers), so results are the same with or without it.

Protocol (what the module offers): ``generator`` (a
:class:`~ilo_pl.modules.generators.base.SplitGenerator`), ``current_state()``,
``split``, ``stage_index``, ``stages``, ``steps_per_problem`` and
``last_result`` (see :class:`~ilo_pl.modules.ilo.ILOModule`); optionally
``log_count`` (how many times it has logged ``loss``: the bars read the loss
back only when it changes; without it, at every refresh).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar

from ilo_pl.callbacks.writer import ResultWriter, _ResultHook
from ilo_pl.compat import progress_bar_settings
from ilo_pl.io import atomic_write_bytes, to_uint8
from ilo_pl.problem import ProblemResult


def problem_label(ids: Sequence[str], max_chars: int = 40) -> str:
    """A short label for a batch of problem ids (``a``, ``a,b`` or ``a,b +3``)."""
    ids = list(ids)
    label = ""
    for n, pid in enumerate(ids):
        cand = pid if not label else f"{label},{pid}"
        if len(cand) > max_chars and label:
            return f"{label} +{len(ids) - n}"
        label = cand
    return label


def reads_module_metrics(bar: Any) -> bool:
    """Whether ``bar`` reads the loss and stage itself (ilo-pl's problem bars), not from ``prog_bar`` metrics."""
    return isinstance(bar, _ProblemMetricsMixin)


class _ProblemMetricsMixin:
    """Adds ``problem``, a readable ``stage`` and the logged ``loss`` to a Lightning progress bar's metrics.

    The loss comes from ``trainer.callback_metrics`` (the module logs it as a
    device tensor, not to the progress bar: see :mod:`ilo_pl.modules.step_logs`)
    and is read back once per logged value, when the bar refreshes, so the bar
    adds one host sync per ``log_every`` steps on an accelerator, not one per step.
    """

    _ids: Sequence[str] = ()
    _batch_number = 0
    _loss_seen: Optional[int] = None
    _loss_value: Optional[float] = None

    def on_train_batch_start(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)  # type: ignore[misc]
        # With restarts the module solves an expanded batch (rows named p0r0, p0r1, ...): name its problems.
        parent = getattr(batch, "parent", None)
        self._ids = list(getattr(batch if parent is None else parent, "ids", ()) or ())
        per = _steps_per_batch(trainer, pl_module)
        self._batch_number = batch_idx // per + 1 if per else 0

    def get_metrics(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> Dict[str, Any]:
        items = dict(super().get_metrics(trainer, pl_module))  # type: ignore[misc]
        if self._ids:
            per = _steps_per_batch(trainer, pl_module)
            n = trainer.num_training_batches
            total = n // per if per and isinstance(n, int) else "?"
            items["problem"] = f"{problem_label(self._ids)} ({self._batch_number}/{total})"
        stages = getattr(pl_module, "stages", None)
        index = getattr(pl_module, "stage_index", -1)
        if stages and index >= 0:
            items["stage"] = f"{index + 1}/{len(stages)} (split {stages[index].split})"
        loss = trainer.callback_metrics.get("loss")
        if isinstance(loss, torch.Tensor):
            count = getattr(pl_module, "log_count", None)  # how many times the module has logged
            if count is None or count != self._loss_seen:  # a newly logged value: read it once
                self._loss_seen, self._loss_value = count, float(loss)
            items.setdefault("loss", round(self._loss_value, 4) if self._loss_value is not None else None)
        # problem and stage first: they are what a user looks for
        ordered = {k: items[k] for k in ("problem", "stage") if k in items}
        ordered.update({k: v for k, v in items.items() if k not in ordered})
        return ordered


def _steps_per_batch(trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> int:
    steps = getattr(pl_module, "steps_per_problem", 0)
    return int(steps) * int(getattr(trainer, "accumulate_grad_batches", 1) or 1)


class ProblemProgressBar(_ProblemMetricsMixin, RichProgressBar):
    """Lightning's Rich progress bar with the current problem, stage and loss."""


class ProblemTQDMProgressBar(_ProblemMetricsMixin, TQDMProgressBar):
    """Lightning's tqdm progress bar with the current problem, stage and loss."""


def problem_progress_bar_for(bar: pl.Callback) -> Optional[pl.Callback]:
    """The problem-aware replacement of a stock Lightning progress bar, or ``None`` for any other bar."""
    if type(bar) is RichProgressBar:
        return ProblemProgressBar(refresh_rate=int(bar.refresh_rate), theme=bar.theme, **progress_bar_settings(bar))
    if type(bar) is TQDMProgressBar:
        return ProblemTQDMProgressBar(
            refresh_rate=bar.refresh_rate, process_position=bar.process_position, **progress_bar_settings(bar)
        )
    return None


class OptimizationGIF(_ResultHook):
    """Write an animated GIF of each problem's optimisation: ``<id>_progress.gif``.

    A frame is the image of the current iterate every ``every_n_steps`` steps
    (``G2`` of the current state at the current split, rendered under
    ``no_grad``); the last frame is the final reconstruction. Frames are kept
    in memory until the problem is finished, downscaled to at most
    ``max_size`` pixels a side. With restarts (:mod:`ilo_pl.modules.restarts`)
    every restart's frames are kept and the GIF shows the winning restart's.

    The GIF is written when the problem finishes (atomically, like every
    output) but is not part of what marks a problem finished: a resumed run
    does not redo GIFs of problems finished before.

    Args:
        every_n_steps: steps between frames.
        output_dir: where to write; default the :class:`ResultWriter`'s run folder.
        duration_ms: display time of a frame.
        max_size: longest side of a frame in pixels (larger images are downscaled).

    Raises:
        ValueError: for ``every_n_steps < 1`` or ``duration_ms < 1``.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        output_dir: Optional[Union[str, Path]] = None,
        duration_ms: int = 100,
        max_size: int = 256,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1; got {every_n_steps}")
        if duration_ms < 1:
            raise ValueError(f"duration_ms must be >= 1; got {duration_ms}")
        self.every_n_steps = int(every_n_steps)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.duration_ms = int(duration_ms)
        self.max_size = int(max_size)
        self._key: Optional[tuple] = None
        self._step = 0
        # Frames by (problem, restart): a batch of restarts has several rows per problem.
        self._frames: Dict[tuple, List[np.ndarray]] = {}
        #: Paths of the GIFs written so far.
        self.written: List[Path] = []

    def _folder(self, trainer: "pl.Trainer") -> Path:
        if self.output_dir is not None:
            return self.output_dir
        for cb in trainer.callbacks:
            if isinstance(cb, ResultWriter) and cb.run_dir is not None:
                return cb.run_dir
        raise ValueError(
            "OptimizationGIF has no folder to write to: give it output_dir, or use it with a ResultWriter"
        )

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        key = getattr(batch, "key", None)
        if key != self._key:
            self._key, self._step = key, 0
            self._frames = {}
        self._step += 1
        if self._step % self.every_n_steps == 0:
            with torch.no_grad():
                image = pl_module.generator.render(pl_module.current_state(), pl_module.split)
            # A row's (problem, restart): RestartBatch lists them; a plain batch is restart 0.
            rows = list(zip(getattr(batch, "problem", range(image.shape[0])), getattr(batch, "restart", [0] * image.shape[0])))
            for b in range(image.shape[0]):
                self._frames.setdefault(rows[b], []).append(self._frame(image[b]))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _frame(self, image: torch.Tensor) -> np.ndarray:
        arr = to_uint8(image)
        h, w = arr.shape[:2]
        if max(h, w) > self.max_size:
            from PIL import Image

            s = self.max_size / max(h, w)
            arr = np.asarray(Image.fromarray(arr).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
        return arr

    def handle(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", result: ProblemResult) -> None:
        from PIL import Image

        folder = self._folder(trainer)
        for b, pid in enumerate(result.batch.ids):
            frames = self._frames.get((b, result.solutions[b].restart), []) + [self._frame(result.images[b])]
            pics = [Image.fromarray(f) for f in frames]
            buf = io.BytesIO()
            pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=self.duration_ms, loop=0)
            path = folder / f"{pid}_progress.gif"
            atomic_write_bytes(path, buf.getvalue())
            self.written.append(path)
        self._frames = {}
