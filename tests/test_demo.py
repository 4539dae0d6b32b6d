"""``ilo-pl demo``'s functions, called without a browser (the page itself: ``tests/test_demo_browser.py``).

* a painted mask becomes an ``Inpainting`` operator (through ``fit``'s config
  path) with exactly the painted pixels hidden;
* photos are converted as ``ilo-pl fit`` converts them, the crop moves;
* bad inputs give a readable message, never an exception;
* a solve reports its stages in order, can be stopped keeping the best so far,
  writes only into the visitor's folder, and its downloaded config reproduces
  its result bit for bit through ``ilo-pl fit``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ilo_pl.config import build_from_config
from ilo_pl.demo import problem as P
from ilo_pl.demo.app import PAINT_SCALE, Demo
from ilo_pl.io import load_image, to_uint8

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    return Demo(root=tmp_path_factory.mktemp("visitors"))


def editor_painting(pixels: Set[Tuple[int, int]], size: Tuple[int, int] = SIZE) -> Dict[str, Any]:
    """An ImageEditor value with one painted canvas pixel inside the enlarged block of each frame pixel."""
    h, w = size
    layer = np.zeros((h * PAINT_SCALE, w * PAINT_SCALE, 4), dtype=np.uint8)
    for r, c in pixels:
        layer[r * PAINT_SCALE + PAINT_SCALE - 1, c * PAINT_SCALE + 1] = (255, 0, 0, 255)
    bg = np.zeros((h * PAINT_SCALE, w * PAINT_SCALE, 3), dtype=np.uint8)
    return {"background": bg, "layers": [layer], "composite": bg}


def mouth_stroke() -> Set[Tuple[int, int]]:
    return {(r, c) for r in range(40, 50) for c in range(20, 44) if (r + c) % 3 or r == 45}


def run_all(demo: Demo, *args: Any, stop_after_stage: int = -1, **kw: Any) -> List[Dict[str, Any]]:
    visitor = demo.visitor(kw.pop("visitor", "t"))
    events = []
    for ev in demo.solve(visitor, *args, **kw):
        events.append(ev)
        if ev["kind"] == "stage_end" and ev["stage"] == stop_after_stage:
            visitor.stop.set()
    return events


# -- the shipped schedules ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(P.TASK_MODELS))
def test_task_models_are_the_shipped_configs(name):
    shipped = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["model"]
    assert P.TASK_MODELS[name] == shipped


def test_quick_preset_divides_steps():
    stages = P.TASK_MODELS["inpainting_box"]["stages"]
    quick = P.quick_stages(stages)
    assert [s["steps"] for s in quick] == [50, 12, 12, 12, 12]
    assert all({k: v for k, v in q.items() if k != "steps"} == {k: v for k, v in s.items() if k != "steps"}
               for q, s in zip(quick, stages))


# -- photos ---------------------------------------------------------------------------------------
def _write(path: Path, im: Image.Image) -> Path:
    im.save(path)
    return path


@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba", "gray16", "small"])
def test_default_crop_is_fits_conversion(kind, tmp_path):
    rng = np.random.default_rng(0)
    if kind == "rgb":
        im = Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8))
    elif kind == "gray":
        im = Image.fromarray(rng.integers(0, 256, (130, 90), dtype=np.uint8))
    elif kind == "rgba":
        im = Image.fromarray(rng.integers(0, 256, (100, 100, 4), dtype=np.uint8), "RGBA")
    elif kind == "gray16":
        im = Image.fromarray(rng.integers(0, 65536, (64, 64), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    path = _write(tmp_path / f"{kind}.png", im)
    frame = P.frame_photo(P.read_photo(path), SIZE)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, to_uint8(load_image(path, SIZE)))


def test_crop_moves_and_zooms(tmp_path):
    arr = np.zeros((100, 300, 3), dtype=np.float32)
    arr[:, :100] = 1.0  # white left third
    assert P.crop_box((100, 300), SIZE) == (0, 100, 100, 100)
    assert P.crop_box((100, 300), SIZE, cx=0.0) == (0, 0, 100, 100)
    assert P.crop_box((100, 300), SIZE, zoom=0.5, cx=1.0, cy=1.0) == (50, 250, 50, 50)
    assert P.frame_photo(arr, SIZE, cx=0.0).min() == 255
    assert P.frame_photo(arr, SIZE).max() == 0
    assert "enlarged" in P.upscale_warning((10, 10), SIZE)
    assert P.upscale_warning((64, 64), SIZE) is None


# -- masks ----------------------------------------------------------------------------------------
def test_painted_mask_becomes_inpainting_with_exactly_those_pixels_hidden(demo, tmp_path):
    pixels = mouth_stroke() | {(0, 0), (63, 63), (10, 5)}
    hidden = P.painted_mask(editor_painting(pixels), SIZE)
    assert {tuple(p) for p in np.argwhere(hidden)} == pixels
    frame = P.sample_face("astronaut", SIZE)
    photo, mask, operator = demo.problem(tmp_path, frame, "paint", None, editor_painting(pixels))
    layer = P.demo_layer("paint", "quick", photo, operator)
    cfg = tmp_path / "layer.yaml"
    cfg.write_text(yaml.safe_dump(layer))
    built = build_from_config([cfg])  # fit's config path
    op = built.datamodule.operator_spec.build((3, *SIZE), 0)
    assert type(op).__name__ == "Inpainting"
    observed = op.mask[0, 0].numpy() == 1
    assert {tuple(p) for p in np.argwhere(~observed)} == pixels
    assert np.array_equal(P.frame_photo(P.read_photo(photo) , SIZE), frame)  # the frame, losslessly


# -- bad inputs -----------------------------------------------------------------------------------
BAD = [
    ("paint", {}, "empty", "the mask is empty"),
    ("paint", {}, "all", "hides every pixel"),
    ("superres", {"factor": 3}, None, "must divide"),
    ("superres", {"factor": 1000}, None, "must divide"),
    ("superres", {"factor": 1}, None, "whole number >= 2"),
    ("superres", {"factor": "abc"}, None, "must be a number"),
    ("superres", {"factor": float("nan")}, None, "finite"),
    ("denoise", {"sigma": -5}, None, "(0, 255]"),
    ("cs", {"ratio": 2.0}, None, "(0, 1]"),
    ("random", {"percent": 0}, None, "(0, 100]"),
    ("box", {"box": [0, 99, 0, 10]}, None, "does not fit"),
    ("box", {"box": [0, 63, 0, 63]}, None, "hides every pixel"),
    ("box", {"box": ["a", 1, 2]}, None, "must be a number"),
    ("tomography", {}, None, "unknown task"),
]


@pytest.mark.parametrize("task, params, paint, says", BAD, ids=[f"{b[0]}-{b[3][:12]}" for b in BAD])
def test_bad_settings_give_a_message(demo, task, params, paint, says):
    frame = P.sample_face("astronaut", SIZE)
    editor = None
    if paint == "all":
        editor = editor_painting({(r, c) for r in range(64) for c in range(64)})
    elif paint == "empty":
        editor = editor_painting(set())
    events = run_all(demo, frame, task, params, editor)
    assert [e["kind"] for e in events] == ["error"]
    assert says in events[0]["message"]


def test_bad_photos_give_a_message(demo, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(P.DemoError, match="not an image file that can be read"):
        demo.frame(str(text))
    with pytest.raises(P.DemoError, match="no photo"):
        demo.frame(str(tmp_path / "missing.jpg"))
    with pytest.raises(P.DemoError, match="zoom"):
        demo.frame(None, "astronaut", zoom=0)[0]
        demo.frame(str(_write(tmp_path / "ok.png", Image.new("RGB", (80, 80)))), zoom=0)
    events = run_all(demo, None, "box")
    assert events[0]["kind"] == "error" and "no photo" in events[0]["message"]
    assert issubclass(P.DemoError, ValueError)


# -- solving --------------------------------------------------------------------------------------
def test_quick_solve_reports_stages_and_reproduces_through_fit(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    demo = Demo(root=tmp_path / "visitors")
    frame = P.sample_face("astronaut", SIZE)
    pixels = mouth_stroke()
    events = run_all(demo, frame, "paint", None, editor_painting(pixels), "quick", True)
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "done", events[-1]
    assert [e["stage"] for e in events if e["kind"] == "stage_end"] == [0, 1, 2, 3, 4]
    steps = [e for e in events if e["kind"] == "step"]
    assert steps[-1]["step"] == steps[-1]["total"] == 98 and all(np.isfinite(e["loss"]) for e in steps)
    done = events[-1]
    labels = [label for label, _ in done["panels"]]
    assert labels == ["observation", "CSGM (stage 1)", "ILO", "ILO, your pixels kept", "ground truth"]
    panels = dict(done["panels"])
    hidden = np.zeros(SIZE, dtype=bool)
    hidden[tuple(np.array(sorted(pixels)).T)] = True
    assert np.array_equal(panels["ILO, your pixels kept"][~hidden], frame[~hidden])
    assert np.array_equal(panels["ILO, your pixels kept"][hidden], panels["ILO"][hidden])
    assert np.array_equal(panels["ground truth"], frame)
    assert set(done["metrics"]) == {"CSGM (stage 1)", "ILO", "ILO, your pixels kept"}
    assert done["metrics"]["ILO"] == {k: float(done["row"][k]) for k in ("true_mse", "psnr", "ssim")}
    names = sorted(p.name for p in done["files"])
    assert names == ["demo_config.yaml", "photo_reconstruction.png", "photo_solution.pt", "reproduce.zip"]
    folder = demo.visitor("t").folder
    assert all(Path(p).is_relative_to(folder) for p in done["files"])
    assert list(cwd.iterdir()) == []  # nothing written outside the visitor's folder

    # the download reproduces the page's result, bit for bit, through `ilo-pl fit`
    repro = tmp_path / "repro"
    with zipfile.ZipFile(done["files"][[p.name for p in done["files"]].index("reproduce.zip")]) as z:
        z.extractall(repro)
    assert (repro / "config.yaml").read_text() == (done["run_dir"] / "demo_config.yaml").read_text()
    proc = subprocess.run([sys.executable, "-c", "from ilo_pl.cli import main; main()", "fit", "--config",
                           "config.yaml"], cwd=repro, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = repro / "runs" / "run_000"
    assert (out / "photo_reconstruction.png").read_bytes() == (done["run_dir"] / "photo_reconstruction.png").read_bytes()
    a = torch.load(out / "photo_solution.pt", weights_only=False)
    b = torch.load(done["run_dir"] / "photo_solution.pt", weights_only=False)
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])

    demo.leave("t")
    assert not folder.exists()


def test_stop_keeps_the_best_so_far(demo):
    frame = P.sample_face("grace_hopper", SIZE)
    events = run_all(demo, frame, "box", None, None, "paper", False, stop_after_stage=0, visitor="stopper")
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "done" and "stopped" in kinds
    done = events[-1]
    assert done["stopped"]
    assert [label for label, _ in done["panels"]] == ["observation", "ILO", "ground truth"]
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert max(steps) < 400  # the paper schedule's 400 steps were not all run
    assert int(done["row"]["best_stage"]) <= 1
    assert (done["run_dir"] / "photo_solution.pt").is_file()
    # a new solve after a stop runs to the end
    events = run_all(demo, frame, "superres", {"factor": 4}, None, "quick", True, visitor="stopper")
    assert events[-1]["kind"] == "done" and not events[-1]["stopped"]


# -- the labelled strips (stage previews, result panels) ------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (256, 256), (300, 120)])
def test_strip_keeps_each_frame_aspect_and_draws_its_captions(size):
    from ilo_pl.demo.strip import caption_band, labelled_strip, strip_count, strip_layout, strip_tiles, tile_size

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(3)]
    labels = ["1. CSGM", "2. split 1", "ILO, your pixels kept"]
    strip = labelled_strip(list(zip(frames, labels)))
    (h, w), tiles, captions = strip_layout(3, size)
    assert strip.shape == (h, w, 3) and strip.dtype == np.uint8
    assert strip_count(w, size) == 3
    th, tw, factor = tile_size(size)
    assert abs(th / tw - size[0] / size[1]) <= 0.5 / min(th, tw) + 1e-9  # the frame's aspect ratio
    for (top, left, bh, bw), (ct, cl, ch, cw), label in zip(tiles, captions, labels):
        assert (bh, bw) == (th, tw)
        assert np.array_equal(strip[ct:ct + ch, cl:cl + cw], caption_band(label, cw))
        assert (caption_band(label, cw) < 128).any()  # the caption is drawn, in dark ink
    if factor:  # a whole enlargement: the frames' exact pixels
        assert all(np.array_equal(a, b) for a, b in zip(strip_tiles(strip, 3, size), frames))
    else:  # a reduction to the tile size
        assert max(th, tw) == 128
        with pytest.raises(ValueError, match="reduced"):
            strip_tiles(strip, 3, size)


def test_strip_captions_wrap_and_odd_inputs():
    from ilo_pl.demo.strip import labelled_strip, wrap_caption

    assert wrap_caption("1. CSGM", 120) == ["1. CSGM"]
    long = wrap_caption("a caption far too long to be drawn on two lines under one small tile", 90)
    assert len(long) == 2 and long[-1].endswith("...")
    gray = np.full((64, 64), 200, dtype=np.uint8)
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    small = np.zeros((16, 16, 3), dtype=np.uint8)  # another size: fitted to the first's
    assert labelled_strip([(gray, "g"), (rgba, "a"), (small, "s")]).shape == labelled_strip([(gray, "g")] * 3).shape
    assert labelled_strip([]).shape[1] > 0
    with pytest.raises(ValueError, match="uint8"):
        labelled_strip([(np.zeros((8, 8, 3)), "float")])


# -- the server: a full queue, --share ------------------------------------------------------------
class WaitingDemo(Demo):
    """A :class:`Demo` whose solve reports one step, then waits for ``gate`` (no CPU spent)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.started = threading.Event()

    def solve(self, visitor, *args: Any, **kwargs: Any):  # noqa: ANN201 - Demo.solve's events
        self.started.set()
        yield {"kind": "step", "step": 1, "total": 2, "stage": 0, "split": 0, "stage_step": 1, "stage_steps": 2,
               "loss": 1.0}
        self.gate.wait(60)
        yield {"kind": "error", "message": "released"}


def test_a_full_queue_refuses_with_a_message(tmp_path):
    pytest.importorskip("gradio", reason="the demo extra is not installed")
    import httpx

    from ilo_pl.demo.app import build_app

    demo = WaitingDemo(root=tmp_path)
    page = build_app(demo, max_queue=1, concurrency=1)  # one solve running, one waiting, no more
    _, url, _ = page.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        (run,) = [i for i, fn in page.fns.items() if fn.name == "run"]

        def join(session: str) -> httpx.Response:
            return httpx.post(f"{url}gradio_api/queue/join", timeout=30,
                              json={"data": [None, None, "box", "", 10, 4, 50, 0.1, "quick", True],
                                    "fn_index": run, "session_hash": session})

        assert join("first").status_code == 200
        assert demo.started.wait(30)  # the first visitor's solve runs
        assert join("second").status_code == 200  # the second waits
        full = join("third")
        # refused at once with a reason (the page shows Gradio's "This application is currently busy.
        # Please try again."), never left waiting
        assert full.status_code == 503
        assert "Queue is full. Max size is 1" in full.json()["detail"]
    finally:
        demo.gate.set()
        page.close()
        for key in list(demo.visitors):
            demo.leave(key)


@pytest.mark.parametrize("share", [True, False])
def test_share_port_and_host_reach_launch(share, monkeypatch):
    gr = pytest.importorskip("gradio", reason="the demo extra is not installed")
    from ilo_pl.demo import app

    calls: List[Dict[str, Any]] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: calls.append(kw))  # no server, no network
    argv = ["--port", "7999", "--host", "0.0.0.0"] + (["--share"] if share else [])
    assert app.main(argv) == 0
    assert calls == [{"server_name": "0.0.0.0", "server_port": 7999, "share": share}]
