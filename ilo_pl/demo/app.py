"""The demo page (Gradio) and ``ilo-pl demo``.

:class:`Demo` holds what the page does, callable without a browser
(``tests/test_demo.py``): :meth:`Demo.frame` turns an upload or a sample face
into the generator's frame, :meth:`Demo.solve` runs a solve and yields its
progress and result. :func:`build_app` lays them out with Gradio;
:func:`main` is ``ilo-pl demo``.
"""


import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ilo_pl.demo import problem as P
from ilo_pl.demo.strip import labelled_strip

log = logging.getLogger("ilo_pl.demo")
# Gradio reports usage to its makers unless told not to: the demo calls out nowhere.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

#: The editor shows the frame enlarged this many times (nearest neighbour), so strokes map to pixels.
PAINT_SCALE = 4
#: The page's progress (bar, loss curve) is redrawn at most this often, in seconds, and at each stage's end:
#: a redraw per step sends the whole curve each time, which on 2 CPU cores slowed the solve and the
#: browser more than the solve's own work.
REDRAW_S = 0.25
#: Sample faces offered on the page (``ilo-pl fit``'s ``data: samples``).
SAMPLES = ("astronaut", "grace_hopper")


@dataclass
class Visitor:
    """One visitor's state: their temporary folder and their Stop flag."""

    folder: Path
    stop: threading.Event = field(default_factory=threading.Event)
    runs: int = 0

    def close(self) -> None:
        """Delete the visitor's folder."""
        shutil.rmtree(self.folder, ignore_errors=True)


class Demo:
    """What the page does, without the page.

    Args:
        base_args: ``ilo-pl fit`` arguments of the base config (``--config ...``
            and overrides); empty: each task's shipped config (embedded DCGAN).
        root: where visitors' temporary folders are made (default: the system's
            temporary folder). Nothing is written anywhere else.

    Raises:
        ValueError: the base config is refused by ``fit``'s parser.
    """

    def __init__(self, base_args: Sequence[str] = (), root: Optional[Path] = None) -> None:
        from ilo_pl.demo.runner import generator_frame, resolve_config

        self.base_args = list(base_args)
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir())
        self.root.mkdir(parents=True, exist_ok=True)
        self.base = resolve_config(self.base_args) if self.base_args else None
        model = self.base.get("model") if self.base else None
        self.size: Tuple[int, int] = generator_frame(model)
        self.visitors: Dict[str, Visitor] = {}

    # -- visitors --------------------------------------------------------------------------------
    def visitor(self, key: str = "default") -> Visitor:
        """The visitor ``key``'s state, made (with a new temporary folder) on first use."""
        if key not in self.visitors:
            folder = Path(tempfile.mkdtemp(prefix="ilo-pl-demo-", dir=self.root))
            self.visitors[key] = Visitor(folder)
        return self.visitors[key]

    def leave(self, key: str) -> None:
        """Forget a visitor and delete their folder."""
        v = self.visitors.pop(key, None)
        if v is not None:
            v.close()

    # -- inputs ----------------------------------------------------------------------------------
    def frame(self, photo: Optional[str] = None, sample: Optional[str] = None, zoom: float = 1.0,
              cx: float = 0.5, cy: float = 0.5) -> Tuple[np.ndarray, str]:
        """The generator's frame of an uploaded photo (or a sample face), and a note for the page.

        Returns:
            ``([h, w, 3] uint8, note)``.

        Raises:
            DemoError: not an image, no photo, a bad crop.
        """
        if photo:
            arr = P.read_photo(photo)
            note = P.upscale_warning(arr.shape[:2], self.size, zoom) or ""
            return P.frame_photo(arr, self.size, zoom, cx, cy), note
        return P.sample_face(sample or SAMPLES[0], self.size), ""

    def editor_value(self, frame: np.ndarray) -> Dict[str, Any]:
        """The ImageEditor value showing ``frame`` enlarged :data:`PAINT_SCALE` times, nothing painted."""
        big = np.repeat(np.repeat(frame, PAINT_SCALE, axis=0), PAINT_SCALE, axis=1)
        return {"background": big, "layers": [], "composite": big}

    def problem(self, folder: Path, frame: np.ndarray, task: str, params: Optional[Mapping[str, Any]] = None,
                editor: Any = None) -> Tuple[Path, Optional[Path], Dict[str, Any]]:
        """Write the problem's inputs into ``folder``; ``(photo.png, mask.png or None, operator entry)``.

        Raises:
            DemoError: a bad mask or parameter.
        """
        if frame is None:
            raise P.DemoError("no photo: upload an image file or pick a sample face")
        frame = np.asarray(frame)
        if frame.shape[:2] != tuple(self.size) or frame.dtype != np.uint8:
            raise P.DemoError(f"the frame must be {self.size[0]}x{self.size[1]} RGB; load the photo again")
        mask_path = None
        if task == "paint":
            hidden = P.painted_mask(editor, self.size)
            mask_path = P.save_png(P.mask_png(hidden), folder / P.MASK_NAME)
        operator = P.operator_entry(task, self.size, params, mask_path)
        photo = P.save_png(frame[..., :3], folder / P.PHOTO_NAME)
        return photo, mask_path, operator

    # -- the solve -------------------------------------------------------------------------------
    def solve(self, visitor: Visitor, frame: np.ndarray, task: str, params: Optional[Mapping[str, Any]] = None,
              editor: Any = None, preset: str = "quick", compare: bool = True) -> Iterator[Dict[str, Any]]:
        """Run a solve; yield its progress events, then ``{"kind": "done", ...}`` or ``{"kind": "error", "message"}``.

        Progress events are :class:`~ilo_pl.demo.runner.DemoProgress`'s. The
        ``done`` event holds ``panels`` (``[(label, [H, W, 3] uint8)]``:
        observation, CSGM (with ``compare``), ILO, ILO with the observed pixels
        kept (inpainting), ground truth), ``metrics`` (per panel: ``true_mse``,
        ``psnr``, ``ssim``), ``files`` (reconstruction PNG, ``solution.pt``,
        ``config.yaml``, ``reproduce.zip``), ``stopped`` and ``run_dir``.
        Never raises for bad inputs or a failed solve: the error event says why.
        """
        from ilo_pl.demo.runner import run_solve

        visitor.stop.clear()
        visitor.runs += 1
        try:
            folder = visitor.folder / f"problem_{visitor.runs:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            photo, mask, operator = self.problem(folder, frame, task, params, editor)
            layer = P.demo_layer(task, preset, photo, operator, self.base.get("model") if self.base else None)
        except P.DemoError as exc:
            yield {"kind": "error", "message": str(exc)}
            return
        events: "queue.SimpleQueue[Dict[str, Any]]" = queue.SimpleQueue()
        box: Dict[str, Any] = {}

        def work() -> None:
            try:
                box["outcome"] = run_solve(visitor.folder, self.base_args, layer, events, visitor.stop)
            except BaseException as exc:  # noqa: BLE001 - reported on the page, logged here
                log.error("demo solve failed:\n%s", traceback.format_exc())
                box["error"] = exc

        thread = threading.Thread(target=work, name="ilo-pl-demo-solve", daemon=True)
        thread.start()
        while thread.is_alive() or not events.empty():
            try:
                yield events.get(timeout=0.2)
            except queue.Empty:
                continue
        thread.join()
        if "error" in box:
            exc = box["error"]
            msg = str(exc) if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {exc}"
            yield {"kind": "error", "message": f"the solve failed: {msg}"}
            return
        yield self._result(box["outcome"], photo, mask, task, compare)

    def _result(self, outcome: Any, photo: Path, mask: Optional[Path], task: str, compare: bool) -> Dict[str, Any]:
        import torch

        from ilo_pl.demo.runner import read_png
        from ilo_pl.io import to_uint8
        from ilo_pl.metrics import image_metrics

        truth = read_png(photo)
        rec_path = outcome.file("reconstruction.png")
        rec = read_png(rec_path)
        panels: List[Tuple[str, np.ndarray]] = []
        obs = outcome.file("observation.png") or outcome.file("observation_backprojection.png")
        if obs is not None:
            panels.append(("observation" if obs.name.endswith("n.png") else "observation (A^T y)", read_png(obs)))
        if compare and outcome.stage_images:
            panels.append(("CSGM (stage 1)", to_uint8(outcome.stage_images[0][0])))
        panels.append(("ILO", rec))
        if mask is not None:  # a painted mask: the observed pixels are the photo's
            hidden = read_png(mask)[..., 0] < 128
            panels.append(("ILO, your pixels kept", np.where(hidden[..., None], rec, truth)))
        panels.append(("ground truth", truth))

        def t(a: np.ndarray) -> "torch.Tensor":
            return torch.from_numpy(a.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]

        # ILO's numbers are fit's (results.csv: the float result vs the photo); CSGM's likewise from its
        # float image; the composite's from its 8-bit picture.
        target = t(truth)
        metrics: Dict[str, Dict[str, float]] = {}
        for label, _ in panels:
            if label == "ILO" and outcome.row.get("psnr"):
                metrics[label] = {k: float(outcome.row[k]) for k in ("true_mse", "psnr", "ssim")}
            elif label.startswith("CSGM"):
                m = image_metrics(outcome.stage_images[0], target)
                metrics[label] = {k: float(m[k][0]) for k in ("true_mse", "psnr", "ssim")}
            elif label.startswith("ILO"):
                m = image_metrics(t(dict(panels)[label]), target)
                metrics[label] = {k: float(m[k][0]) for k in ("true_mse", "psnr", "ssim")}
        config_text = (outcome.run_dir / "config.yaml").read_text()
        cfg_path = outcome.run_dir / "demo_config.yaml"
        cfg_path.write_text(P.portable_config(config_text))
        zip_path = P.reproduction_zip(config_text, photo, mask, outcome.run_dir / "reproduce.zip")
        files = [p for p in (rec_path, outcome.file("solution.pt"), cfg_path, zip_path) if p is not None]
        return {"kind": "done", "panels": panels, "metrics": metrics, "files": files, "stopped": outcome.stopped,
                "run_dir": outcome.run_dir, "row": outcome.row}


# -- the page -------------------------------------------------------------------------------------
def _bar(done: int, total: int, text: str) -> str:
    pct = 0 if total <= 0 else min(100, round(100 * done / total))
    return (f'<div id="ilo-progress" data-done="{done}" data-total="{total}">'
            f'<progress max="100" value="{pct}" style="width:100%"></progress>'
            f'<div>{text} ({pct}%)</div></div>')


def _metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    if not metrics:
        return ""
    lines = ["| | PSNR (dB) | SSIM | true MSE |", "|---|---|---|---|"]
    for label, m in metrics.items():
        lines.append(f"| {label} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['true_mse']:.5f} |")
    return "\n".join(lines)


def _strip(items: Sequence[Tuple[np.ndarray, str]]) -> Dict[str, Any]:
    """A ``gr.Image`` update showing ``items`` (``(image, caption)``) as one labelled strip.

    The captions also go to the image's alt text, for screen readers (and the browser test).
    """
    import gradio as gr

    return gr.update(value=labelled_strip(items), alt_text=" | ".join(label for _, label in items))


def build_app(demo: Optional[Demo] = None, max_queue: int = 8, concurrency: Optional[int] = None) -> Any:
    """The Gradio page of ``demo``.

    Args:
        demo: the :class:`Demo` (default: the embedded DCGAN).
        max_queue: visitors waiting at most; one more is refused at once, and their page says "This
            application is currently busy. Please try again." (Gradio's words for its full queue).
        concurrency: solves at a time (default: one per CPU).
    """
    import gradio as gr
    import pandas as pd

    demo = demo if demo is not None else Demo()
    concurrency = concurrency or max(1, os.cpu_count() or 1)
    h, w = demo.size
    default_box = ",".join(map(str, P.default_box(demo.size)))

    def load(photo: Optional[str], sample: str, zoom: float, cx: float, cy: float, request: gr.Request) -> Tuple:
        try:
            frame, note = demo.frame(photo, sample, zoom, cx, cy)
        except P.DemoError as exc:
            return None, gr.update(), f"**{exc}**"
        return frame, demo.editor_value(frame), note

    def run(frame: Any, editor: Any, task: str, box: str, percent: float, factor: float, sigma: float,
            ratio: float, preset: str, compare: bool, request: gr.Request) -> Iterator[Tuple]:
        visitor = demo.visitor(getattr(request, "session_hash", None) or "default")
        params = {"box": [s for s in box.replace(";", ",").split(",") if s.strip()] if box else None,
                  "percent": percent, "factor": factor, "sigma": sigma, "ratio": ratio}
        losses: List[Dict[str, Any]] = []
        previews: List[Tuple[np.ndarray, str]] = []
        empty = pd.DataFrame({"step": [], "loss": []})
        nothing = gr.update()
        drawn = 0.0  # when the progress was last sent
        blank = gr.update(value=None, alt_text=None)
        yield (_bar(0, 1, "starting"), blank, empty, blank, "", None, "")
        for ev in demo.solve(visitor, frame, task, params, editor, preset, compare):
            kind = ev["kind"]
            if kind == "step":
                losses.append({"step": ev["step"], "loss": ev["loss"]})
                now = time.monotonic()
                if now - drawn < REDRAW_S and ev["stage_step"] < ev["stage_steps"]:
                    continue  # kept for the next redraw
                drawn = now
                text = (f"stage {ev['stage'] + 1} (split {ev['split']}): step {ev['stage_step']}/{ev['stage_steps']}"
                        f", loss {ev['loss']:.4g}")
                yield (_bar(ev["step"], ev["total"], text), nothing, pd.DataFrame(losses), nothing, nothing,
                       nothing, nothing)
            elif kind == "stage_end":
                name = "CSGM" if ev["stage"] == 0 else f"split {ev['split']}"
                previews.append((ev["image"], f"{len(previews) + 1}. {name}"))
                yield (nothing, _strip(previews), nothing, nothing, nothing, nothing, nothing)
            elif kind == "stopped":
                yield (_bar(ev["step"], max(ev["step"], 1), "stopped: keeping the best so far"), nothing,
                       pd.DataFrame(losses), nothing, nothing, nothing, nothing)
            elif kind == "error":
                yield (_bar(0, 1, "not started" if not losses else "failed"), nothing, nothing, nothing, nothing,
                       None, f"**{ev['message']}**")
            elif kind == "done":
                shown = [(img, label) for label, img in ev["panels"]]
                note = ("Stopped early: this is the best iterate so far (the config reproduces the full solve)."
                        if ev["stopped"] else "Done. `config.yaml` reproduces this result with `ilo-pl fit`.")
                done = losses[-1]["step"] if losses else 1
                # (the curve again: steps since the last redraw were not sent)
                yield (_bar(done, done, "done" if not ev["stopped"] else "stopped"), nothing,
                       pd.DataFrame(losses) if losses else nothing, _strip(shown), _metrics_table(ev["metrics"]),
                       [str(p) for p in ev["files"]], note)

    def stop(request: gr.Request) -> str:
        key = getattr(request, "session_hash", None) or "default"
        if key in demo.visitors:
            demo.visitors[key].stop.set()
        return "stopping after this step..."

    def leave(request: gr.Request) -> None:
        demo.leave(getattr(request, "session_hash", None) or "default")

    with gr.Blocks(title="ilo-pl demo") as page:
        gr.Markdown(f"# ILO: Intermediate Layer Optimization\nUpload a face (or pick a sample), paint what is "
                    f"missing or choose a task, and watch CSGM, then ILO's stages, reconstruct it. Generator "
                    f"frame: {h}x{w}.")
        frame_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.File(label="Your photo (any image file)", type="filepath", elem_id="photo")
                sample = gr.Dropdown(list(SAMPLES), value=SAMPLES[0], label="or a sample face", elem_id="sample")
                zoom = gr.Slider(0.2, 1.0, value=1.0, step=0.01, label="crop: zoom (1 = largest)")
                cx = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="crop: horizontal position")
                cy = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="crop: vertical position")
                task = gr.Radio([(v, k) for k, v in P.TASKS.items()], value="paint", label="Task", elem_id="task")
                box = gr.Textbox(default_box, label="box: top, bottom, left, right (pixels of the frame)")
                percent = gr.Slider(1, 100, value=10, step=1, label="random pixels: % observed")
                factor = gr.Number(4, label="super-resolution factor", precision=0)
                sigma = gr.Slider(1, 150, value=50, step=1, label="denoising: sigma (0..255)")
                ratio = gr.Slider(0.01, 1.0, value=0.1, step=0.01, label="compressed sensing: m/n")
                preset = gr.Radio(list(P.PRESETS), value="quick", label="Steps", elem_id="preset")
                compare = gr.Checkbox(True, label="show CSGM beside ILO")
                with gr.Row():
                    go = gr.Button("Run", variant="primary", elem_id="run")
                    halt = gr.Button("Stop", elem_id="stop")
            with gr.Column(scale=2):
                message = gr.Markdown("", elem_id="message")
                editor = gr.ImageEditor(type="numpy", label="Paint what is missing (task: the mask you paint)",
                                        sources=(), transforms=(), layers=False, elem_id="editor",
                                        brush=gr.Brush(colors=["#ff0000"], default_size=12, color_mode="fixed"),
                                        height=h * PAINT_SCALE + 120, width=w * PAINT_SCALE + 40)
                bar = gr.HTML(_bar(0, 1, "idle"), elem_id="bar")
                # One drawn strip per gr.Image, not a gr.Gallery: Gradio 6's gallery crops its cells (and their
                # captions) when it holds fewer images than columns (see ilo_pl/demo/strip.py).
                # (titles as Markdown above, no buttons: Gradio draws its label and buttons over the image)
                gr.Markdown("**Stage ends**: the image each stage hands on (CSGM, then ILO's splits)")
                previews = gr.Image(None, label="Stage ends", show_label=False, type="numpy", format="png",
                                    interactive=False, buttons=[], elem_id="previews")
                plot = gr.LinePlot(x="step", y="loss", label="loss per step (all stages)", elem_id="plot",
                                   height=220)
                gr.Markdown("**Result**: observation | CSGM | ILO | ground truth")
                panels = gr.Image(None, label="Result", show_label=False, type="numpy", format="png",
                                  interactive=False, buttons=[], elem_id="panels")
                metrics = gr.Markdown("", elem_id="metrics")
                files = gr.File(label="Downloads: reconstruction, solution.pt (ilo-pl regenerate), config.yaml "
                                      "(ilo-pl fit), reproduce.zip", file_count="multiple", elem_id="files")
        inputs = [photo, sample, zoom, cx, cy]
        for comp in inputs:
            comp.change(load, inputs, [frame_state, editor, message], queue=False)
        page.load(load, inputs, [frame_state, editor, message], queue=False)
        go.click(run, [frame_state, editor, task, box, percent, factor, sigma, ratio, preset, compare],
                 [bar, previews, plot, panels, metrics, files, message], concurrency_limit=concurrency)
        halt.click(stop, None, message, queue=False)
        page.unload(leave)
    page.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    return page


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ilo-pl demo [--port N] [--share] [--host H] [--config X ...] [--section.key V ...]``.

    Options it does not know go to ``fit``'s parser as the base config.
    """
    from ilo_pl.demo.options import demo_parser

    parser = demo_parser()
    ns, rest = parser.parse_known_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        parser.error("the demo needs Gradio: pip install 'ilo-pl[demo]' (or bash scripts/bootstrap.sh)")
    try:
        demo = Demo(rest)
    except ValueError as exc:
        parser.error(str(exc))
    page = build_app(demo, ns.max_queue, ns.concurrency)
    try:
        page.launch(server_name=ns.host, server_port=ns.port, share=ns.share)
    finally:
        for key in list(demo.visitors):
            demo.leave(key)
    return 0
