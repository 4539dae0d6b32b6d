"""The ``ilo-pl`` command: ``fit`` (LightningCLI) and ``regenerate``.

``ilo-pl fit --config configs/inpainting_box.yaml`` solves every problem of
the configured data with the configured stages and writes a new run folder
(``output.output_dir/run_NNN``) with PNGs, solutions, ``results.csv`` and the
resolved ``config.yaml``. Configs layer (``--config base.yaml --config
task.yaml``), any key can be overridden on the command line
(``--data.batch_size 8``; one entry of a list by its index, counted from 0:
``--model.stages.0.steps 100``), and ``--print_config`` shows the result.

* Resume a killed run: ``ilo-pl fit --config X --output.run_dir runs/run_003``
  (finished problems are skipped; see :mod:`ilo_pl.resume`).
* Several processes/devices/machines: ``--trainer.strategy ilo_ddp
  --trainer.devices N [--trainer.num_nodes M]`` (see :mod:`ilo_pl.strategy`).
* Regenerate a saved reconstruction: ``ilo-pl regenerate --solution
  runs/run_000/x_solution.pt --config runs/run_000/config.yaml --out x.png``.
* Try it in a browser: ``ilo-pl demo [--port 7860] [--share] [--config X ...]``
  (:mod:`ilo_pl.demo`; needs the ``demo`` extra).

This module is the console script's entry point and stays light: help, the
command list and the errors :mod:`ilo_pl.precheck` finds in configs answer
without importing torch or Lightning (which take seconds); ``fit`` imports
:mod:`ilo_pl.lightning_cli` (:class:`~ilo_pl.lightning_cli.ILOCLI`, also
reachable as ``ilo_pl.cli.ILOCLI``) once its arguments pass those checks.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, List, NoReturn, Optional, Sequence

#: The commands, with their one-line help.
COMMANDS = {
    "fit": "solve every problem of a config; writes a new run folder (runs/run_NNN)",
    "regenerate": "render a saved reconstruction from its <id>_solution.pt and its run's config.yaml",
    "demo": "a local browser page: paint a mask on your photo and watch ILO solve it (needs ilo-pl[demo])",
}
#: LightningCLI's other subcommands, which have nothing to do in ILO.
REFUSED = ("validate", "test", "predict")

EPILOG = """\
`ilo-pl fit --help` lists every option of fit (each config key is one);
`ilo-pl regenerate --help` those of regenerate; `ilo-pl demo --help` those of demo.

example:
  ilo-pl fit --config configs/inpainting_box.yaml --data.data faces/ --model.stages.0.steps 100
"""

#: Names that :mod:`ilo_pl.lightning_cli` provides here on first use (importing torch and Lightning then).
_LAZY = ("ILOCLI", "RESUME_IGNORED", "check_resume_config", "install_problem_progress_bar", "launch_rank",
         "redirect_loggers")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from ilo_pl import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _parser() -> argparse.ArgumentParser:
    """The top-level parser: it only formats help and errors (``fit``'s arguments are LightningCLI's)."""
    from ilo_pl import __version__

    parser = argparse.ArgumentParser(
        prog="ilo-pl",
        description="Intermediate Layer Optimization (ILO) for inverse problems with pre-trained generators.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ilo-pl {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="{" + ",".join(COMMANDS) + "}")
    for name, text in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def _refuse(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)  # usage and message on stderr, exit status 2


def regenerate_main(argv: List[str]) -> int:
    """``ilo-pl regenerate``: render a saved solution with the generator of its run's config."""
    parser = argparse.ArgumentParser(
        prog="ilo-pl regenerate",
        description="Regenerate a saved reconstruction from its <id>_solution.pt and its run's config.yaml.",
    )
    parser.add_argument("--solution", required=True, help="the <id>_solution.pt file")
    parser.add_argument("--config", help="the run's config.yaml (default: config.yaml beside the solution)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--device", default="cpu", help="where to render (default cpu)")
    parser.add_argument(
        "--no_check_identity", action="store_true",
        help="render even if the generator's weights or render settings differ from the ones that made the solution",
    )
    ns = parser.parse_args(argv)
    config = Path(ns.config) if ns.config else Path(ns.solution).parent / "config.yaml"
    # Checked before torch is imported (seconds): the common mistakes answer at once.
    if not Path(ns.solution).is_file():
        _refuse(parser, f"--solution {ns.solution}: no such file")
    if not config.is_file():
        _refuse(parser, f"{'--config ' if ns.config else ''}{config}: no such file"
                        f"{'' if ns.config else ' (give the run config.yaml with --config)'}")
    from ilo_pl.solutions import regenerate_file

    regenerate_file(ns.solution, config, ns.out, check_identity=not ns.no_check_identity, device=ns.device)
    print(f"ilo-pl: wrote {ns.out}", file=sys.stderr)
    return 0


def demo_main(argv: List[str]) -> int:
    """``ilo-pl demo``: serve the browser demo (:mod:`ilo_pl.demo.app`); ``--help`` answers without torch."""
    if any(a in ("-h", "--help") for a in argv):
        from ilo_pl.demo.options import demo_parser

        demo_parser().parse_args(["--help"])  # prints and exits
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        print("ilo-pl demo: error: the demo needs Gradio: pip install 'ilo-pl[demo]' "
              "(or bash scripts/bootstrap.sh)", file=sys.stderr)
        raise SystemExit(2)
    from ilo_pl.demo.app import main as app_main

    return app_main(argv)


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at the time (test capture, redirection)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # set by StreamHandler.__init__; the live sys.stderr wins
        pass


def show_info_messages() -> None:
    """Print ilo-pl's INFO log lines (resuming a run, one-time kernel builds) to stderr.

    Python shows only warnings from loggers nobody configured; the command
    line wants these notes too, like its other ``ilo-pl: ...`` lines. Idempotent.
    """
    log = logging.getLogger("ilo_pl")
    if not any(getattr(h, "_ilo_pl_cli", False) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("ilo-pl: %(message)s"))
        handler._ilo_pl_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)


#: Lightning's notices that say nothing about an ILO run: advertisements ("Tip: ... litlogger"),
#: the device inventory (the devices used are the trainer settings), the global seed (every ILO
#: problem draws from its own seeded generators) and the end of the one epoch every run has.
LIGHTNING_NOTICES = ("Tip: ", "GPU available: ", "TPU available: ", "HPU available: ", "CUDA_VISIBLE_DEVICES: [",
                     "Seed set to ", "No seed found, seed set to ", "`Trainer.fit` stopped: `max_epochs=")
#: The loggers Lightning writes those notices to.
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                     "lightning_fabric.utilities.seed", "pytorch_lightning.accelerators.cuda")


class _NoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in LIGHTNING_NOTICES)


@contextlib.contextmanager
def lightning_notices_hidden() -> Iterator[None]:
    """Hide :data:`LIGHTNING_NOTICES` (log lines and warnings) while the block runs.

    Lightning's real warnings (a GPU that is not used, a deprecated setting
    of yours) and ilo-pl's own lines are kept. Needs no Lightning import.
    """
    notice_filter = _NoticeFilter()
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    for log in loggers:
        log.addFilter(notice_filter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No seed found, seed set to")
            yield
    finally:
        for log in loggers:
            log.removeFilter(notice_filter)


def _keep_freed_memory() -> None:
    """ilo-pl's allocator settings for the solve (:mod:`ilo_pl.malloc`); a bad ``ILO_PL_MALLOC`` is refused."""
    from ilo_pl.malloc import keep_freed_memory

    try:
        keep_freed_memory()
    except ValueError as exc:
        print(f"ilo-pl: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``ilo-pl`` console script.

    Args:
        args: the arguments (``["fit", "--config", ...]``); ``None`` reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    parser = _parser()
    if not argv:
        _refuse(parser, f"give a command: {', '.join(list(COMMANDS)[:-1])} or {list(COMMANDS)[-1]} "
                        "(ilo-pl --help explains them)")
    command = argv[0]
    if command in ("-h", "--help", "--version"):
        parser.parse_args(argv[:1])  # prints and exits
    show_info_messages()
    if command in ("fit", "regenerate", "demo"):
        _keep_freed_memory()
    if command == "regenerate":
        regenerate_main(argv[1:])
        return
    if command == "demo":
        demo_main(argv[1:])
        return
    if command in REFUSED:
        _refuse(parser, f"{command!r} is not an ilo-pl command: `ilo-pl fit` solves every problem and writes "
                        f"its reconstruction and metrics (results.csv); there is nothing to {command}. "
                        f"Commands: {', '.join(COMMANDS)}")
    if command == "fit":
        from ilo_pl.precheck import ArgumentsError, check_fit_args

        try:
            check_fit_args(argv[1:])
        except ArgumentsError as exc:
            print("usage: ilo-pl fit [--config CONFIG ...] [--section.key VALUE ...] "
                  "(ilo-pl fit --help lists them)", file=sys.stderr)
            print(f"ilo-pl fit: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    elif not _lightning_top_level_option(command):
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = "option" if command.startswith("-") else "command"
        _refuse(parser, f"unknown {what} {command!r}{hint}; give a command first: {', '.join(COMMANDS)}")
    from ilo_pl.lightning_cli import ILOCLI

    ILOCLI(args=None if args is None else argv)


def _lightning_top_level_option(arg: str) -> bool:
    """Options LightningCLI takes before the command (``--config`` with a ``fit:`` section, ``--print_config``)."""
    name = arg.split("=", 1)[0]
    return name == "-c" or any(len(name) > 3 and o.startswith(name) for o in ("--config", "--print_config"))


if __name__ == "__main__":
    main()
