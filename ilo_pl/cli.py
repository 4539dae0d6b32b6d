"""The ``ilo-pl`` command: LightningCLI over :class:`ILOModule` and :class:`InverseProblemDataModule`.

``ilo-pl fit --config configs/inpainting_box.yaml`` solves every problem of
the configured data with the configured stages and writes a new run folder
(``output.output_dir/run_NNN``) with PNGs, solutions, ``results.csv`` and the
resolved ``config.yaml``. Configs layer (``--config base.yaml --config
task.yaml``), any key can be overridden on the command line
(``--model.stages.0.steps 100``), and ``--print_config`` shows the result.

There is deliberately no ``optimizer:``/``lr_scheduler:`` entry: ILO rebuilds
its Adam optimizer at every stage over the new variables, with the per-stage
``lr`` and ramp schedule. (LightningCLI would otherwise let such an entry
replace ``configure_optimizers`` silently.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from ilo_pl.api import quiet_lightning
from ilo_pl.callbacks.writer import ResultWriter
from ilo_pl.data import InverseProblemDataModule
from ilo_pl.io import atomic_write_bytes, new_run_dir
from ilo_pl.modules.ilo import ILOModule

RUN_DIR_ENV = "ILO_PL_RUN_DIR"

TRAINER_DEFAULTS = {
    "max_epochs": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "use_distributed_sampler": False,
    "log_every_n_steps": 10,
}


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
        # One run folder per run, shared by all processes of a multi-process
        # launch: rank 0 creates it and children inherit it via the environment.
        writer = next(c for c in self.trainer.callbacks if isinstance(c, ResultWriter))
        if writer.run_dir is None:
            existing = os.environ.get(RUN_DIR_ENV)
            writer.run_dir = Path(existing) if existing else new_run_dir(writer.output_dir)
            os.environ[RUN_DIR_ENV] = str(writer.run_dir)
        if self.trainer.is_global_zero:
            cfg = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
            atomic_write_bytes(writer.run_dir / "config.yaml", cfg.encode())
        print(f"ilo-pl: writing results to {writer.run_dir}", file=sys.stderr)


def main(args: Optional[List[str]] = None) -> None:
    """Entry point of the ``ilo-pl`` console script."""
    ILOCLI(args=args)


if __name__ == "__main__":
    main()
