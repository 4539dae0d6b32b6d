"""The demo page in a real browser: headless Chromium (Debian's ``chromium``) driven by playwright.

Starts the app, uploads a face, paints a stroke over the mouth, runs a quick
solve and checks that the result appeared, that the result's observed pixels
(outside the stroke) are the upload's, that the stage previews arrived in
order, and that the preview and result strips are drawn at their own aspect
ratio (not stretched, cropped or covered) with their captions. The solve's
time is printed, not asserted (``scripts/demo_screenshot.py --time N``
measures it). A second test fills the queue and checks that the next visitor
is told the page is busy. Skipped, saying why, when Gradio, playwright or
``/usr/bin/chromium`` is missing (``.ci/run`` installs chromium with apt;
``scripts/bootstrap.sh`` the two packages).
"""

from __future__ import annotations

import io
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio", reason="the demo extra is not installed (pip install 'ilo-pl[demo]')")
pytest.importorskip("playwright", reason="playwright is not installed (pip install 'ilo-pl[demo]')")
CHROMIUM = os.environ.get("ILO_PL_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)

from PIL import Image  # noqa: E402

from ilo_pl.demo import problem as P  # noqa: E402
from ilo_pl.demo.app import Demo, build_app  # noqa: E402
from ilo_pl.demo.strip import caption_band, strip_layout  # noqa: E402
from scripts.demo_screenshot import paint_and_run, serve  # noqa: E402


def _check_strip(read, labels, size):
    """A strip on the page: drawn undistorted, whole and uncovered, tiles of the frame's shape, captions drawn."""
    assert read is not None
    assert read["alt"] == " | ".join(labels)
    nw, nh = read["natural"]
    dw, dh = read["drawn"]
    assert abs((dw / dh) / (nw / nh) - 1) < 0.01, read  # the aspect ratio the strip has, not the box's
    assert dw >= 0.75 * nw, read  # not shrunk past reading (13 px captions)
    assert read["inside"], read  # not cut off by its container
    assert read["covered"] == [], read  # nothing (a label, a button) drawn over it
    (h, w), tiles, captions = strip_layout(len(labels), size)
    strip = np.asarray(Image.open(io.BytesIO(read["png"])).convert("RGB"))
    assert strip.shape[:2] == (h, w) == (nh, nw)
    for (_, _, th, tw), (top, left, bh, bw), label in zip(tiles, captions, labels):
        assert th * size[1] == tw * size[0]  # each tile at the frame's aspect ratio
        assert np.array_equal(strip[top:top + bh, left:left + bw], caption_band(label, bw)), label


def test_upload_paint_solve_in_a_browser(tmp_path):
    face = tmp_path / "face.png"
    # An upload larger than the frame, which the page crops and resizes as `ilo-pl fit` would.
    Image.fromarray(P.sample_face("grace_hopper", (64, 64))).resize((200, 200), Image.LANCZOS).save(face)
    with serve(tmp_path / "visitors") as (demo, url):
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1700})
                got = paint_and_run(page, url, face, screenshot=tmp_path / "mid.png", size=demo.size)
                (visitor,) = demo.visitors.values()
                (problem,) = sorted(visitor.folder.glob("problem_*"))
                hidden = np.asarray(Image.open(problem / P.MASK_NAME)) < 128
            finally:
                browser.close()
        assert (tmp_path / "mid.png").is_file()
        assert got["run_s"] is not None, got["message"]  # the solve finished (its time is measured by
        # scripts/demo_screenshot.py --time N, a benchmark, not asserted here)
        print(f"quick solve in the browser: Run -> result and downloads {got['run_s']:.1f} s")
        # the result appeared: observation | CSGM | ILO | ILO, your pixels kept | ground truth
        assert got["captions"] == ["observation", "CSGM (stage 1)", "ILO", "ILO, your pixels kept", "ground truth"]
        stages = ["1. CSGM", "2. split 1", "3. split 2", "4. split 3", "5. split 4"]
        assert got["previews"] == stages
        # each strip seen mid-solve held the stages so far, in order, drawn undistorted
        for read in got["preview_strips"]:
            assert stages[:len(read["alt"].split(" | "))] == read["alt"].split(" | ")
            nw, nh = read["natural"]
            assert abs((read["drawn"][0] / read["drawn"][1]) / (nw / nh) - 1) < 0.01, read
        _check_strip(got["strips"]["previews"], stages, demo.size)
        _check_strip(got["strips"]["panels"], got["captions"], demo.size)
        assert "Done" in got["message"]
        assert 0 < hidden.sum() < 0.25 * hidden.size
        rows = np.nonzero(hidden.any(1))[0]
        assert rows.min() >= 30 and rows.max() <= 60  # the stroke is over the mouth
        upload_frame = P.frame_photo(P.read_photo(face), (64, 64))
        kept = got["images"]["ILO, your pixels kept"]
        assert np.array_equal(kept[~hidden], upload_frame[~hidden])
        assert np.array_equal(got["images"]["ground truth"], upload_frame)


class _WaitingDemo(Demo):
    """A :class:`Demo` whose solve reports one step, then waits for ``gate`` (no CPU spent)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.started = threading.Event()

    def solve(self, visitor, *args, **kwargs):
        self.started.set()
        yield {"kind": "step", "step": 1, "total": 2, "stage": 0, "split": 0, "stage_step": 1, "stage_steps": 2,
               "loss": 1.0}
        self.gate.wait(60)
        yield {"kind": "error", "message": "released"}


def test_a_full_queue_tells_the_visitor(tmp_path):
    import httpx

    demo = _WaitingDemo(root=tmp_path / "visitors")
    app = build_app(demo, max_queue=1, concurrency=1)  # one solve running, one waiting, no more
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        (run,) = [i for i, fn in app.fns.items() if fn.name == "run"]
        # two other visitors fill the queue (as their pages would: the Run button's event)
        for session in ("first", "second"):
            joined = httpx.post(f"{url}gradio_api/queue/join", timeout=30,
                                json={"data": [None, None, "box", "", 10, 4, 50, 0.1, "quick", True],
                                      "fn_index": run, "session_hash": session})
            assert joined.status_code == 200
            assert demo.started.wait(30)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 1400})
                page.goto(url)
                page.wait_for_selector("#editor canvas", timeout=30_000)
                page.click("#run")
                # the third visitor is told at once, in words, not left waiting
                page.get_by_text("currently busy").first.wait_for(timeout=15_000)
                assert "try again" in page.inner_text("body").lower()
            finally:
                browser.close()
    finally:
        demo.gate.set()
        app.close()
        for key in list(demo.visitors):
            demo.leave(key)
