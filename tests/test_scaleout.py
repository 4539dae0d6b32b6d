"""Scale-out: problems sharded over processes with ``strategy="ilo_ddp"``, no gradient all-reduce.

The end-to-end test launches ``ilo-pl fit`` with two CPU processes (gloo)
through Lightning's subprocess launcher, on three problems (uneven: two on
rank 0, one on rank 1), and compares with one process.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.strategies import StrategyRegistry

from ilo_pl.api import default_trainer_kwargs
from ilo_pl.cli import main
from ilo_pl.data import InverseProblemDataModule
from ilo_pl.modules import ILOModule
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.operators import BoxMask
from ilo_pl.solutions import load_solution
from ilo_pl.stages import Stage
from ilo_pl.strategy import ILOStrategy

# In-process `ilo-pl` runs pass their arguments explicitly; pytest's own argv is not theirs.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

CONFIG = """
model:
  generator: {{class_path: ilo_pl.modules.generators.DCGANGenerator}}
  stages:
    - {{split: 0, steps: 4, lr: 0.1, free: [latent]}}
    - {{split: 1, steps: 3, lr: 0.1, free: [state], radius: {{state: 500.0}}}}
    - {{split: 2, steps: 3, lr: 0.1, free: [state], radius: {{state: 300.0}}}}
data:
  data: {data}
  operator: {{class_path: ilo_pl.operators.BoxMask, init_args: {{box: [38, 55, 14, 49]}}}}
  batch_size: 1
  seed: 0
trainer:
  enable_progress_bar: false
"""


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    for i in range(n):
        rgb = np.stack([(xx * (i + 1)) % 1, yy, 0.5 + 0.5 * np.cos(5 * xx + 3 * yy + i)], -1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_strategy_is_registered_and_refuses_ddp_options():
    assert "ilo_ddp" in StrategyRegistry
    assert StrategyRegistry["ilo_ddp"]["strategy"] is ILOStrategy
    with pytest.raises(ValueError, match=r"does not wrap the module in DistributedDataParallel.*find_unused"):
        ILOStrategy(find_unused_parameters=True)
    with pytest.raises(ValueError, match="start_method='popen' only"):
        ILOStrategy(start_method="spawn")


class _CollectiveProbe(pl.Callback):
    """Records, while training, the model the strategy steps and every collective call."""

    def __init__(self) -> None:
        super().__init__()
        self.training = False
        self.models: list = []
        self.collectives: list = []
        self.process_group_world_size = None

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.training = True
        if torch.distributed.is_initialized():
            self.process_group_world_size = torch.distributed.get_world_size()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.models.append(trainer.strategy.model)
        # The check Lightning's loop makes before every step when there are several ranks
        # (with one rank it skips it): it must not be a collective.
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor()

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.training = False


def test_strategy_keeps_module_unwrapped_and_runs_no_collective_per_step(monkeypatch):
    """A real fit under ilo_ddp: a process group exists, yet the module is never wrapped in
    DistributedDataParallel (whose all-reduce would mix problems) and no step runs a collective."""
    from torch.nn.parallel import DistributedDataParallel

    # The launcher writes MASTER_PORT etc. into os.environ: keep them out of this process.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    probe = _CollectiveProbe()
    for name in ("broadcast", "all_reduce", "all_gather", "barrier", "reduce", "broadcast_object_list"):
        real = getattr(torch.distributed, name)

        def counted(*args, _real=real, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if probe.training:
                probe.collectives.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch.distributed, name, counted)
    stages = [Stage(split=0, steps=3, lr=0.1, free=["latent"])]
    module = ILOModule(DCGANGenerator(weights="random"), stages)
    dm = InverseProblemDataModule(BoxMask(box=(38, 55, 14, 49)), data="samples", limit=1)
    kw = default_trainer_kwargs()
    kw.update(accelerator="cpu", devices=1, strategy=ILOStrategy(process_group_backend="gloo"), callbacks=[probe])
    try:
        pl.Trainer(**kw).fit(module, datamodule=dm)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert probe.process_group_world_size == 1  # a real process group, as with several ranks
    assert len(probe.models) == 3
    assert all(m is module and not isinstance(m, DistributedDataParallel) for m in probe.models)
    # Lightning's loop would broadcast a SIGTERM flag every step (and hang ranks with fewer problems).
    assert probe.collectives == []


def test_strategy_requires_no_distributed_sampler(monkeypatch):
    # The launcher writes MASTER_PORT etc. into os.environ: keep them out of this process.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    stages = [Stage(split=0, steps=1, lr=0.1, free=["latent"])]
    module = ILOModule(DCGANGenerator(weights="random"), stages)
    dm = InverseProblemDataModule(BoxMask(box=(38, 55, 14, 49)), data="samples")
    kw = default_trainer_kwargs()
    kw.update(accelerator="cpu", devices=1, strategy=ILOStrategy(), use_distributed_sampler=True)
    with pytest.raises(ValueError, match="needs Trainer\\(use_distributed_sampler=False\\)"):
        pl.Trainer(**kw).fit(module, datamodule=dm)
    assert not torch.distributed.is_initialized()


def test_two_processes_give_the_one_process_outputs(tmp_path):
    data = _images(tmp_path / "data", 3)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(data=data))
    out = tmp_path / "runs"
    log = tmp_path / "ddp.log"
    cmd = [sys.executable, "-m", "ilo_pl.cli", "fit", "--config", str(cfg), "--output.output_dir", str(out),
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ilo_ddp"]
    with open(log, "w") as err:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per rank, as in this process (conftest)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=540)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # both ranks: the session this test started
            proc.wait()
            pytest.fail(f"2-process run did not finish in 540 s (hung?):\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "Starting with 2 processes" in text  # really two ranks
    # round-robin shards, each problem solved once: p0, p2 on rank 0 and p1 on rank 1
    finished = sorted(line.split("ilo-pl: ")[1].split(" (")[0] for line in text.splitlines() if ": finished " in line)
    assert finished == ["rank 0: finished p0", "rank 0: finished p2", "rank 1: finished p1"]
    runs = sorted(out.iterdir())
    assert [p.name for p in runs] == ["run_000"], "ranks must share one run folder"
    two = runs[0]

    one = tmp_path / "one"
    main(["fit", "--config", str(cfg), "--output.run_dir", str(one), "--trainer.accelerator", "cpu"])

    ids = ["p0", "p1", "p2"]
    for pid in ids:
        for kind in ("reconstruction", "observation", "target", "grid"):
            name = f"{pid}_{kind}.png"
            assert (two / name).read_bytes() == (one / name).read_bytes(), name
        a, b = load_solution(two / f"{pid}_solution.pt"), load_solution(one / f"{pid}_solution.pt")
        assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    with open(two / "results.csv", newline="") as f:
        rows2 = list(csv.DictReader(f))
    with open(one / "results.csv", newline="") as f:
        rows1 = list(csv.DictReader(f))
    assert [r["id"] for r in rows2] == ids  # each problem once, none skipped
    assert rows2 == rows1
    assert not list(two.glob("results.rank*.csv"))  # merged
    assert (two / "config.yaml").is_file()
