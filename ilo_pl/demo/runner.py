"""The demo's solve: ``ilo-pl fit``'s own engine with a live-progress callback.

:func:`run_solve` runs :class:`~ilo_pl.lightning_cli.ILOCLI` (what ``ilo-pl
fit`` runs) on the base config plus the demo's layer, into a run folder of the
visitor's temporary folder; :class:`DemoProgress` reports stage, step, loss
and each stage's kept image through a queue, and ends the solve early when
asked, keeping the best iterate so far (which the run folder's
:class:`~ilo_pl.callbacks.ResultWriter` then writes like any result).
"""

from __future__ import annotations

import csv
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
import yaml

from ilo_pl.io import new_run_dir, to_uint8
from ilo_pl.lightning_cli import ILOCLI

#: Progress events are sent every this many steps (and at every stage end).
EVENT_EVERY = 5


class DemoProgress(pl.Callback):
    """Report a solve's progress to the page, and stop it when asked.

    Events put on ``events`` (dicts, ``"kind"`` first):

    * ``{"kind": "step", "stage", "split", "step", "stage_step", "stage_steps", "total", "loss"}``
      every :data:`EVENT_EVERY` steps and at each stage's last step (``loss``:
      the step's loss per problem);
    * ``{"kind": "stage_end", "stage", "split", "image"}`` when a stage ends: its
      kept iterate (the one the next stage starts from) as ``[H, W, 3]`` uint8;
    * ``{"kind": "stopped", "stage", "step"}`` when the solve was ended by ``stop``.

    Args:
        events: where events go (anything with ``put``).
        stop: when set, the solve ends after the current step; the best
            iterate so far becomes the result (``pl_module.last_result``), which
            the result writer writes as usual.
    """

    def __init__(self, events: Any, stop: Optional[threading.Event] = None, every: int = EVENT_EVERY) -> None:
        super().__init__()
        self.events = events
        self.stop = stop if stop is not None else threading.Event()
        self.every = max(1, int(every))
        self.step = 0
        #: The kept image of each finished stage (``[1, C, H, W]`` float, CPU).
        self.stage_images: List[torch.Tensor] = []
        self.stopped = False

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.step += 1
        index = pl_module.stage_index
        stages = pl_module.stages
        stage_steps = stages[index].steps
        stage_step = pl_module._stage_step // max(1, pl_module._accumulate())
        ended = stage_step >= stage_steps
        if self.step % self.every == 0 or ended or self.stop.is_set():
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            value = float(loss.detach()) / max(1, len(batch)) if isinstance(loss, torch.Tensor) else float("nan")
            self.events.put({"kind": "step", "stage": index, "split": stages[index].split, "step": self.step,
                             "stage_step": stage_step, "stage_steps": stage_steps,
                             "total": pl_module.steps_per_problem, "loss": value})
        tracker = pl_module.tracker
        if ended and tracker is not None and len(self.stage_images) <= index:
            self._stage_end(pl_module, index)
        if self.stop.is_set() and not self.stopped and pl_module.last_result is None and tracker is not None:
            self.stopped = True
            if len(self.stage_images) <= index:
                self._stage_end(pl_module, index)
            splits = [s.split for s in stages]
            # The best iterate so far, as the module would return it at the end (ResultWriter writes it next):
            # finished as the module finishes (each problem's best restart or their mean, the consistency step).
            from ilo_pl.modules.finish import finish

            pl_module.last_result = finish(pl_module, tracker.compute(pl_module._batch, splits, pl_module.generator.render))
            trainer.should_stop = True
            self.events.put({"kind": "stopped", "stage": index, "step": self.step})

    @torch.no_grad()
    def _stage_end(self, pl_module: "pl.LightningModule", index: int) -> None:
        rec = pl_module.tracker.records[index]
        image = rec["image"]
        if image is None:  # no finite iterate in the stage: its start
            image = pl_module.generator.render(rec["state"], pl_module.stages[index].split)
        image = image[:1].detach().float().cpu()
        self.stage_images.append(image)
        self.events.put({"kind": "stage_end", "stage": index, "split": pl_module.stages[index].split,
                         "image": to_uint8(image[0])})


class _DemoCLI(ILOCLI):
    """:class:`ILOCLI` (``ilo-pl fit``) with extra callbacks put first, so that they run before the writer."""

    def __init__(self, args: List[str], callbacks: Sequence[pl.Callback]) -> None:
        self._extra = list(callbacks)
        super().__init__(args=args, run=True)

    def before_fit(self) -> None:
        super().before_fit()
        for cb in reversed(self._extra):
            self.trainer.callbacks.insert(0, cb)


@dataclass
class SolveOutcome:
    """What a demo solve left.

    Attributes:
        run_dir: the run folder (``ilo-pl fit``'s files: ``photo_reconstruction.png``,
            ``photo_solution.pt``, ``config.yaml``, ``results.csv``, ...).
        row: the problem's ``results.csv`` row (strings).
        stage_images: each finished stage's kept image (``[1, C, H, W]``, ``[-1, 1]``).
        stopped: whether the visitor ended it early.
    """

    run_dir: Path
    row: Dict[str, str]
    stage_images: List[torch.Tensor] = field(repr=False)
    stopped: bool = False

    def file(self, suffix: str) -> Optional[Path]:
        """``<run_dir>/photo_<suffix>`` if it exists."""
        path = self.run_dir / f"photo_{suffix}"
        return path if path.is_file() else None


def run_solve(workdir: Path, base_args: Sequence[str], layer: Mapping[str, Any], events: Any = None,
              stop: Optional[threading.Event] = None) -> SolveOutcome:
    """Solve the demo's problem with ``ilo-pl fit``'s engine, into a new run folder of ``workdir``.

    Args:
        workdir: the visitor's folder (the layer and the run folder go there).
        base_args: the base config as ``fit`` arguments (``["--config", "x.yaml", "--key", "v"]``; may be empty).
        layer: the demo's layer (:func:`ilo_pl.demo.problem.demo_layer`).
        events: where :class:`DemoProgress` sends events (default: dropped).
        stop: set it to end the solve early (best so far kept).

    Raises:
        ValueError: the config is refused (the parser's message); other exceptions of the solve pass through.
    """
    workdir = Path(workdir)
    run_dir = new_run_dir(workdir)
    layer_path = run_dir.parent / f".{run_dir.name}_layer.yaml"
    layer = {**layer, "trainer": {**dict(layer.get("trainer") or {}), "enable_progress_bar": False}}
    layer_path.write_text(yaml.safe_dump(dict(layer), sort_keys=False))
    progress = DemoProgress(events if events is not None else queue.SimpleQueue(), stop)
    args = ["fit", *base_args, "--config", str(layer_path), "--output.run_dir", str(run_dir)]
    try:
        _DemoCLI(args, [progress])
    except SystemExit as exc:  # the parser refused the config (its message went to stderr)
        raise ValueError(f"the config was refused (exit {exc.code}); see the server's log") from None
    rows = list(csv.DictReader((run_dir / "results.csv").open())) if (run_dir / "results.csv").is_file() else []
    return SolveOutcome(run_dir=run_dir, row=rows[0] if rows else {}, stage_images=progress.stage_images,
                        stopped=progress.stopped)


def resolve_config(base_args: Sequence[str]) -> Dict[str, Any]:
    """The resolved config of ``fit`` arguments (``--config`` files, overrides), without building anything.

    Raises:
        ValueError: the parser refuses them (its message).
    """
    import contextlib
    import io

    class _Resolved(Exception):
        pass

    class _Resolver(ILOCLI):
        def before_instantiate_classes(self) -> None:
            raise _Resolved(self.parser.dump(self.config["fit"], skip_none=False))

    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages):
            _Resolver(args=["fit", *base_args], run=True)
    except _Resolved as done:
        return yaml.safe_load(done.args[0]) or {}
    except SystemExit as exc:
        text = messages.getvalue()
        reason = text[text.find("error:"):].strip() if "error:" in text else text.strip()[-2000:]
        raise ValueError(f"the demo's --config and overrides are not valid: {reason}") from None
    raise RuntimeError("the config resolver did not stop")  # pragma: no cover


def generator_frame(model: Optional[Mapping[str, Any]]) -> Tuple[int, int]:
    """The generator's image size ``(h, w)`` (instantiates it once; the default DCGAN when ``model`` is None)."""
    import importlib

    entry = (model or {}).get("generator") or {"class_path": "ilo_pl.modules.generators.DCGANGenerator"}
    module, _, name = str(entry["class_path"]).rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    gen = cls(**(entry.get("init_args") or {}))
    shape = tuple(gen.image_shape)
    return int(shape[1]), int(shape[2])


def read_png(path: Path) -> np.ndarray:
    """A PNG as ``[H, W, 3]`` uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
