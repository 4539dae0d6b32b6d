"""The ``ilo-pl`` command: LightningCLI over :class:`ILOModule` and :class:`InverseProblemDataModule`.

``ilo-pl fit --config configs/inpainting_box.yaml`` solves every problem of
the configured data with the configured stages and writes a new run folder
(``output.output_dir/run_NNN``) with PNGs, solutions, ``results.csv`` and the
resolved ``config.yaml``. Configs layer (``--config base.yaml --config
task.yaml``), any key can be overridden on the command line
(``--model.stages.0.steps 100``), and ``--print_config`` shows the result.

* Resume a killed run: ``ilo-pl fit --config X --output.run_dir runs/run_003``
  (finished problems are skipped; see :mod:`ilo_pl.resume`).
* Several processes/devices/machines: ``--trainer.strategy ilo_ddp
  --trainer.devices N [--trainer.num_nodes M]`` (see :mod:`ilo_pl.strategy`).
* Regenerate a saved reconstruction: ``ilo-pl regenerate --solution
  runs/run_000/x_solution.pt --config runs/run_000/config.yaml --out x.png``.

There is deliberately no ``optimizer:``/``lr_scheduler:`` entry: ILO rebuilds
its Adam optimizer at every stage over the new variables, with the per-stage
``lr`` and ramp schedule. (LightningCLI would otherwise let such an entry
replace ``configure_optimizers`` silently.)
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

import ilo_pl.strategy  # noqa: F401 - registers strategy="ilo_ddp"
from ilo_pl.compat import move_logger, replace_callback
from ilo_pl.callbacks.writer import ResultWriter
from ilo_pl.data import InverseProblemDataModule
from ilo_pl.io import atomic_write_bytes
from ilo_pl.manifest import renamed
from ilo_pl.modules.ilo import ILOModule
from ilo_pl.trainer import TRAINER_DEFAULTS, quiet_lightning

#: Config entries that may change when a run is resumed (they do not change any result).
RESUME_IGNORED = {"model.log_every"}


class ILOCLI(LightningCLI):
    """LightningCLI with ILO's defaults and an ``output`` section (:class:`ResultWriter`)."""

    def __init__(self, args: Optional[List[str]] = None, run: bool = True) -> None:
        quiet_lightning()
        super().__init__(
            ILOModule,
            InverseProblemDataModule,
            subclass_mode_model=False,
            subclass_mode_data=False,
            auto_configure_optimizers=False,
            save_config_callback=None,
            trainer_defaults=TRAINER_DEFAULTS,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResultWriter, "output")

    def before_fit(self) -> None:
        trainer = self.trainer
        writer = next(c for c in trainer.callbacks if isinstance(c, ResultWriter))
        # The process that was launched first (rank 0) creates the run folder and
        # writes config.yaml; processes Lightning launches later, or that a
        # cluster starts beside it, get the folder from rank 0 by broadcast in
        # ResultWriter.setup. (Before the process group exists, a launched
        # child's trainer.global_rank still reads 0, hence launch_rank.)
        if launch_rank(trainer) == 0:
            cfg_text = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
            writer.open_run_dir()
            cfg_path = writer.run_dir / "config.yaml"
            if cfg_path.is_file():  # resuming: the problems must be the same ones
                check_resume_config(cfg_path, cfg_text)
            else:
                atomic_write_bytes(cfg_path, cfg_text.encode())
            redirect_loggers(trainer, writer.run_dir)
            print(f"ilo-pl: writing results to {writer.run_dir}", file=sys.stderr, flush=True)
        install_problem_progress_bar(trainer)


def launch_rank(trainer: Any) -> int:
    """This process's global rank as its launcher assigned it (valid before the process group exists)."""
    strategy = trainer.strategy
    env = getattr(strategy, "cluster_environment", None)
    if env is None:
        return 0
    try:
        return int(env.node_rank()) * int(strategy.num_processes) + int(env.local_rank())
    except (AttributeError, TypeError):
        return int(trainer.global_rank)


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def check_resume_config(existing: Path, new_text: str) -> None:
    """Refuse to resume a run folder with a config that defines other problems or another solver.

    Compares the ``model`` and ``data`` sections (except :data:`RESUME_IGNORED`).
    The trainer settings that change results (precision, gradient accumulation,
    deterministic algorithms, ...) and the data folder's contents are checked
    from their effective values by :class:`ResultWriter` (``run_manifest.json``,
    see :mod:`ilo_pl.manifest`); the rest of ``trainer`` (devices, loggers,
    progress bar) and ``output`` may differ.

    Raises:
        ValueError: naming the entries that differ.
    """
    with open(existing) as f:
        try:
            old = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            old = exc
    if not isinstance(old, dict):
        raise ValueError(
            f"cannot resume {existing.parent}: its config.yaml is not an ilo-pl config (not a YAML mapping). "
            "Start a new run folder (leave out --output.run_dir)"
        )
    new = yaml.safe_load(new_text) or {}
    old = renamed(old)  # class paths recorded under an earlier name
    a = {k: v for k, v in _flatten({s: old.get(s) for s in ("model", "data")}).items() if k not in RESUME_IGNORED}
    b = {k: v for k, v in _flatten({s: new.get(s) for s in ("model", "data")}).items() if k not in RESUME_IGNORED}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:5])
        # Entries the folder's config lacks may be options added since the ilo-pl that wrote it
        # (e.g. new init args): no config resumes the folder then, so a new run folder is the fix.
        newer = [k for k in diff if k not in a]
        hint = (
            f" ({', '.join(newer[:3])}{' ...' if len(newer) > 3 else ''}: not in its config.yaml; if these are "
            "options added since the ilo-pl version that wrote it, this version cannot resume it)" if newer else
            f"; if the differences are your own overrides, resume without them (--config {existing})"
        )
        raise ValueError(
            f"cannot resume {existing.parent}: its config.yaml differs in {shown}"
            f"{' ...' if len(diff) > 5 else ''}. Start a new run folder (leave out --output.run_dir){hint}"
        )


def redirect_loggers(trainer: Any, run_dir: Path) -> None:
    """Make CSV and TensorBoard loggers write into the run folder (``<run_dir>/<name>/<version>``)."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    for logger in trainer.loggers:
        if not isinstance(logger, (CSVLogger, TensorBoardLogger)):
            continue
        if not move_logger(logger, run_dir):
            warnings.warn(
                f"{type(logger).__name__} already started in {logger.save_dir}; it is not moved to {run_dir}",
                stacklevel=2,
            )


def install_problem_progress_bar(trainer: Any) -> None:
    """Swap Lightning's stock progress bar for one that shows the problem and stage."""
    from ilo_pl.callbacks.progress import problem_progress_bar_for

    for cb in trainer.callbacks:
        new = problem_progress_bar_for(cb)
        if new is not None:
            replace_callback(trainer, cb, new)
            return


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
    from ilo_pl.solutions import regenerate_file

    config = Path(ns.config) if ns.config else Path(ns.solution).parent / "config.yaml"
    regenerate_file(ns.solution, config, ns.out, check_identity=not ns.no_check_identity, device=ns.device)
    print(f"ilo-pl: wrote {ns.out}", file=sys.stderr)
    return 0


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


def main(args: Optional[List[str]] = None) -> None:
    """Entry point of the ``ilo-pl`` console script."""
    show_info_messages()
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "regenerate":
        regenerate_main(argv[1:])
        return
    ILOCLI(args=args)


if __name__ == "__main__":
    main()
