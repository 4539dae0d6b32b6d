"""``ilo-pl demo``'s own options (light: no torch, no Gradio), shared by its help and :func:`ilo_pl.demo.app.main`."""

from __future__ import annotations

import argparse


def demo_parser() -> argparse.ArgumentParser:
    """The parser of ``ilo-pl demo``'s own options; any other option is one of ``ilo-pl fit``'s config."""
    parser = argparse.ArgumentParser(
        prog="ilo-pl demo",
        allow_abbrev=False,  # (--config must reach fit's parser, never match --concurrency)
        description="Serve a local page (Gradio) to try ILO on your photo: paint a mask or pick a task, "
                    "watch the stages, download the result and the config that reproduces it with "
                    "`ilo-pl fit`. Needs the demo extra: pip install 'ilo-pl[demo]'.",
        epilog="Any other option is a config option of `ilo-pl fit` (the base config; default: the "
               "embedded DCGAN with each task's shipped config), e.g. --config "
               "configs/stylegan2/ffhq1024_inpainting_box.yaml --model.generator.init_args.checkpoint X.pt",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    parser.add_argument("--max_queue", type=int, default=8, help="visitors waiting at most (default 8)")
    parser.add_argument("--concurrency", type=int, default=None, help="solves at a time (default: one per CPU)")
    return parser
