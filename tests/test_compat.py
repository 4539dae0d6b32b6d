"""The private Lightning/PyTorch names ilo-pl relies on (``ilo_pl.compat``) exist in the installed versions."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins import MixedPrecision
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ilo_pl import compat
from ilo_pl.callbacks.progress import ProblemTQDMProgressBar


def _trainer(**kw) -> pl.Trainer:  # noqa: ANN003
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False, **kw)


def test_grad_scaler_and_its_scale_tensor() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer = _trainer(accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert compat.grad_scaler(trainer) is scaler
    scaler.scale(torch.ones(1))  # the scale tensor is made lazily, at the first use
    assert torch.equal(compat.scale_tensor(scaler).cpu(), torch.tensor(2.0**10))
    assert compat.grad_scaler(_trainer(accelerator="cpu")) is None
    assert compat.grad_scaler(None) is None  # a module not attached to a trainer


def test_distributed_sampler_flag() -> None:
    assert compat.uses_distributed_sampler(_trainer(accelerator="cpu", use_distributed_sampler=False)) is False
    assert compat.uses_distributed_sampler(_trainer(accelerator="cpu")) is True


def test_the_epoch_loop_still_has_the_sigterm_broadcast_to_replace() -> None:
    trainer = _trainer(accelerator="cpu")
    loop = trainer.fit_loop.epoch_loop
    assert hasattr(loop, "_broadcast_sigterm_tensor"), "Lightning moved the per-step SIGTERM broadcast"
    compat.make_sigterm_check_local(trainer)
    loop._broadcast_sigterm_tensor()  # no collective, no flag: nothing happens
    trainer._signal_connector.received_sigterm = True  # what the SIGTERM handler sets
    with pytest.raises(SIGTERMException):
        loop._broadcast_sigterm_tensor()


@pytest.mark.parametrize("cls", [CSVLogger, TensorBoardLogger])
def test_move_logger_before_and_after_it_starts(cls, tmp_path) -> None:  # noqa: ANN001
    logger = cls(tmp_path / "elsewhere", name="logs")
    assert compat.move_logger(logger, tmp_path / "run")
    assert logger.root_dir.startswith(str(tmp_path / "run"))
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    assert not compat.move_logger(logger, tmp_path / "other")  # started: left where it writes
    assert logger.root_dir.startswith(str(tmp_path / "run"))


def test_replace_callback_keeps_the_position() -> None:
    trainer = _trainer(accelerator="cpu", enable_progress_bar=True)
    old = trainer.progress_bar_callback
    new = ProblemTQDMProgressBar()
    at = trainer.callbacks.index(old)
    compat.replace_callback(trainer, old, new)
    assert trainer.callbacks[at] is new and old not in trainer.callbacks


def test_progress_bar_settings_of_the_stock_bars() -> None:
    from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar

    assert compat.progress_bar_settings(TQDMProgressBar(leave=True)) == {"leave": True}
    rich = compat.progress_bar_settings(RichProgressBar(leave=True, console_kwargs={"width": 80}))
    assert rich == {"leave": True, "console_kwargs": {"width": 80}}


def test_attached_trainer() -> None:
    module = pl.LightningModule()
    assert compat.attached_trainer(module) is None
    trainer = _trainer(accelerator="cpu")
    module.trainer = trainer
    assert compat.attached_trainer(module) is trainer


def test_cli_parser_is_the_subcommands_parser() -> None:
    import yaml

    from ilo_pl.compat import cli_parser
    from ilo_pl.lightning_cli import ILOCLI

    cli = ILOCLI(args=["--config", "configs/inpainting_box.yaml", "--model.selection", "last"], run=False)
    dumped = yaml.safe_load(cli_parser(cli, None).dump(cli.config, skip_none=False))
    assert dumped["model"]["selection"] == "last" and len(dumped["model"]["stages"]) == 5
