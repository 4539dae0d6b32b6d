"""Screenshot of the demo page mid-solve (docs/images/demo_page.png), by the browser test's code path.

    .venv/bin/python scripts/demo_screenshot.py [--out docs/images/demo_page.png] [--chromium /usr/bin/chromium]

Starts ``ilo-pl demo``'s app on a free local port, opens it in headless
Chromium (playwright), uploads a sample face, paints a stroke over the mouth,
runs a quick solve and takes the screenshot when the second stage preview has
arrived; ``tests/test_demo_browser.py`` runs the same :func:`paint_and_run`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Tuple[Any, str]]:
    """Run the demo app (embedded DCGAN, visitors' folders under ``root``); yields ``(Demo, url)``."""
    from ilo_pl.demo.app import Demo, build_app

    demo = Demo(root=root)
    page = build_app(demo, max_queue=4, concurrency=1)
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        page.close()


def _gallery(page: Any, selector: str) -> Tuple[list, list]:
    """``(captions, image URLs)`` of a Gradio gallery."""
    return page.evaluate(
        """(sel) => {
            const root = document.querySelector(sel);
            const items = [...root.querySelectorAll('.thumbnail-item, .grid-wrap button')];
            const caps = [...root.querySelectorAll('.caption-label, .thumbnail-item .caption')].map(e => e.textContent.trim());
            const imgs = [...root.querySelectorAll('.grid-wrap img')].map(e => e.src);
            return [caps, imgs];
        }""", selector)


def paint_and_run(page: Any, url: str, photo: Path, screenshot: Optional[Path] = None, preset: str = "quick",
                  timeout_s: float = 180.0) -> Dict[str, Any]:
    """Upload ``photo``, paint over the mouth, run a quick solve; screenshot mid-solve; read the result.

    Returns:
        ``captions`` (result panels), ``previews`` (stage preview captions, in
        arrival order), ``images`` (panel caption -> PNG bytes), ``message``.
    """
    page.goto(url)
    page.wait_for_selector("#editor canvas", timeout=30_000)
    page.set_input_files("#photo input[type=file]", str(photo))
    page.wait_for_timeout(2500)  # the frame reaches the editor
    canvas = page.locator("#editor canvas").first
    box = canvas.bounding_box()
    # The frame fills the canvas's centre square: a stroke across the mouth (rows ~45/64, columns 20..44).
    side = min(box["width"], box["height"])
    x0, y0 = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    page.mouse.move(x0 + side * 20 / 64, y0 + side * 45 / 64)
    page.mouse.down()
    for i in range(1, 13):
        page.mouse.move(x0 + side * (20 + 2 * i) / 64, y0 + side * 45 / 64, steps=2)
    page.mouse.up()
    page.wait_for_timeout(800)
    page.locator("#preset label", has_text=preset).click()
    page.click("#run")
    seen: list = []
    shot = screenshot is None
    deadline = time.time() + timeout_s
    message = ""
    while time.time() < deadline:
        caps, _ = _gallery(page, "#previews")
        for c in caps:
            if c not in seen:
                seen.append(c)
        progress = page.evaluate("""() => { const e = document.querySelector('#ilo-progress');
            return e ? [Number(e.dataset.done), Number(e.dataset.total)] : [0, 1]; }""")
        if not shot and (len(seen) >= 2 or progress[0] >= 0.6 * progress[1] > 0) and progress[0] < progress[1]:
            page.screenshot(path=str(screenshot), full_page=True)
            shot = True
        message = page.inner_text("#message")
        if "Done" in message or "Stopped" in message or "**" in message or "failed" in message:
            break
        page.wait_for_timeout(100)
    page.wait_for_timeout(500)
    caps, _ = _gallery(page, "#previews")
    for c in caps:
        if c not in seen:
            seen.append(c)
    if not shot:
        page.screenshot(path=str(screenshot), full_page=True)
    captions, srcs = _gallery(page, "#panels")
    images = {c: page.request.get(s).body() for c, s in zip(captions, srcs)}
    return {"captions": captions, "previews": seen, "images": images, "message": page.inner_text("#message")}


def main(argv: Optional[list] = None) -> int:
    """Take the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "demo_page.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    ns = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright
    from PIL import Image

    from ilo_pl.demo import problem as P

    with tempfile.TemporaryDirectory(prefix="ilo-pl-screenshot-") as tmp:
        face = Path(tmp) / "face.png"
        Image.fromarray(P.sample_face("astronaut", (64, 64))).resize((256, 256), Image.LANCZOS).save(face)
        with serve(Path(tmp) / "visitors") as (_, url), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=ns.chromium, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1700})
                # the paper schedule: slow enough to catch it mid-solve
                got = paint_and_run(page, url, face, screenshot=Path(ns.out), preset="paper")
            finally:
                browser.close()
    print(f"wrote {ns.out} ({got['message'].strip()[:80]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
