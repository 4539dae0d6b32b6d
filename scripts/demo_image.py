#!/usr/bin/env python
"""Make the README's demo picture from a run folder of the demo config.

    .venv/bin/ilo-pl fit --config configs/inpainting_box.yaml
    .venv/bin/python scripts/demo_image.py runs/run_NNN [--out docs/images/demo_inpainting_box.png]

Stacks the run's ``<id>_grid.png`` (observation | reconstruction | ground
truth) in id order and enlarges them 4x with nearest-neighbour sampling, so
every pixel shown is a pixel the run wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="the demo's run folder (runs/run_NNN)")
    ap.add_argument("--out", type=Path, default=Path("docs/images/demo_inpainting_box.png"))
    ap.add_argument("--scale", type=int, default=4)
    args = ap.parse_args()
    grids = sorted(args.run_dir.glob("*_grid.png"))
    if not grids:
        raise SystemExit(f"no *_grid.png in {args.run_dir}: give the folder of a finished demo run")
    images = [Image.open(p).convert("RGB") for p in grids]
    width = max(im.width for im in images)
    sheet = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        sheet.paste(im, (0, y))
        y += im.height
    sheet = sheet.resize((sheet.width * args.scale, sheet.height * args.scale), Image.NEAREST)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}) from {len(grids)} grids of {args.run_dir}")


if __name__ == "__main__":
    main()
