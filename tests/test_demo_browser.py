"""The demo page in a real browser: headless Chromium (Debian's ``chromium``) driven by playwright.

Starts the app, uploads a face, paints a stroke over the mouth, runs a quick
solve and checks that the result appeared, that the result's observed pixels
(outside the stroke) are the upload's, and that the stage previews arrived in
order. Skipped, saying why, when Gradio, playwright or ``/usr/bin/chromium``
is missing (``.ci/run`` installs chromium with apt; ``scripts/bootstrap.sh``
the two packages).
"""

from __future__ import annotations

import io
import os
import shutil
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
from scripts.demo_screenshot import paint_and_run, serve  # noqa: E402


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
                got = paint_and_run(page, url, face, screenshot=tmp_path / "mid.png")
                (visitor,) = demo.visitors.values()
                (problem,) = sorted(visitor.folder.glob("problem_*"))
                hidden = np.asarray(Image.open(problem / P.MASK_NAME)) < 128
            finally:
                browser.close()
        assert (tmp_path / "mid.png").is_file()
        # the result appeared: observation | CSGM | ILO | ILO, your pixels kept | ground truth
        assert got["captions"] == ["observation", "CSGM (stage 1)", "ILO", "ILO, your pixels kept", "ground truth"]
        assert got["previews"] == ["1. CSGM", "2. split 1", "3. split 2", "4. split 3", "5. split 4"]
        assert "Done" in got["message"]
        assert 0 < hidden.sum() < 0.25 * hidden.size
        rows = np.nonzero(hidden.any(1))[0]
        assert rows.min() >= 30 and rows.max() <= 60  # the stroke is over the mouth
        upload_frame = P.frame_photo(P.read_photo(face), (64, 64))
        kept = np.asarray(Image.open(io.BytesIO(got["images"]["ILO, your pixels kept"])).convert("RGB"))
        assert np.array_equal(kept[~hidden], upload_frame[~hidden])
        truth = np.asarray(Image.open(io.BytesIO(got["images"]["ground truth"])).convert("RGB"))
        assert np.array_equal(truth, upload_frame)
