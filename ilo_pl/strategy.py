"""Scale-out: shard problems across processes, devices and machines with Lightning's launchers.

ILO solves *independent* problems: every rank optimises the variables of its
own problems, so nothing may be averaged across ranks. Lightning's ``ddp``
wraps the module in ``DistributedDataParallel``, whose gradient all-reduce
would mix different images' latents. :class:`ILOStrategy` keeps everything
else of ``DDPStrategy`` -- the launchers (``devices``, ``num_nodes``), the
cluster environments (SLURM, torchrun/TorchElastic, LSF, ...), the process
group and its ``broadcast``/``barrier`` -- and drops the wrapper:

* no ``DistributedDataParallel``: no gradient all-reduce, no buffer broadcast;
* no per-step collective: Lightning's training loop broadcasts a "SIGTERM
  received" flag from rank 0 at *every* step when a process group exists; with
  problems sharded round-robin a rank may have one batch more than another
  (``N`` problems over ``W`` ranks), and an unmatched collective would hang.
  The check is made local instead (each rank stops on its own SIGTERM;
  rank 0 forwards a SIGTERM to the children it launched);
* ranks may finish at different times (or get no problem at all); they meet
  once, in :class:`~ilo_pl.callbacks.ResultWriter`'s end-of-fit barrier that
  merges the per-rank CSVs, so the process-group timeout defaults to a day.

Use it with ``strategy="ilo_ddp"`` (registered on import of this module; the
``ilo-pl`` CLI imports it) or ``strategy=ILOStrategy()``, together with
``use_distributed_sampler=False`` (the data module shards by
``trainer.global_rank``/``world_size`` itself)::

    ilo-pl fit --config cfg.yaml --trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ilo_ddp
    # GPUs on 2 machines under SLURM (srun starts one task per GPU):
    srun ilo-pl fit --config cfg.yaml --trainer.devices 4 --trainer.num_nodes 2 --trainer.strategy ilo_ddp
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry

from ilo_pl.compat import attached_trainer, make_sigterm_check_local, uses_distributed_sampler

#: Default process-group timeout: ranks wait for the slowest one at the end of a run.
DEFAULT_TIMEOUT = timedelta(days=1)


class ILOStrategy(DDPStrategy):
    """``DDPStrategy`` without ``DistributedDataParallel``: one independent solver per rank.

    Takes the arguments of :class:`~pytorch_lightning.strategies.DDPStrategy`
    (``process_group_backend``, ``timeout``, ``start_method``, cluster
    environment, ...); DDP-specific ones (communication hooks, model
    averaging, ``find_unused_parameters``) are refused because nothing is
    all-reduced.

    Raises:
        ValueError: for a DDP-only argument, or (at fit) when the trainer
            wraps samplers in a ``DistributedSampler``
            (``use_distributed_sampler=True``).
    """

    strategy_name = "ilo_ddp"

    def __init__(self, *args: Any, timeout: Optional[timedelta] = DEFAULT_TIMEOUT, **kwargs: Any) -> None:
        ddp_only = {"ddp_comm_state", "ddp_comm_hook", "ddp_comm_wrapper", "model_averaging_period",
                    "find_unused_parameters", "static_graph", "gradient_as_bucket_view"}
        given = sorted(k for k in ddp_only if kwargs.get(k) is not None)
        if given:
            raise ValueError(
                f"ILOStrategy does not wrap the module in DistributedDataParallel, so {given} do not apply; "
                "remove them"
            )
        if kwargs.get("start_method", "popen") != "popen":
            raise ValueError(
                f"ILOStrategy supports start_method='popen' only (got {kwargs['start_method']!r}): spawned "
                "workers cannot hand the per-problem state back; use strategy='ilo_ddp'"
            )
        super().__init__(*args, timeout=timeout, **kwargs)

    def configure_ddp(self) -> None:
        # Keep the bare LightningModule: each rank's variables belong to its own problems.
        assert isinstance(self.model, pl.LightningModule)

    def setup_environment(self) -> None:
        # Checked before the process group is created, so a wrong setting fails fast.
        module = self.lightning_module
        trainer = attached_trainer(module) if module is not None else None
        if trainer is not None and uses_distributed_sampler(trainer):
            raise ValueError(
                "ILOStrategy needs Trainer(use_distributed_sampler=False): the data module shards the "
                "problems across ranks itself, and a DistributedSampler would split each problem's "
                "repeated steps between ranks"
            )
        super().setup_environment()

    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        make_sigterm_check_local(trainer)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        if "ilo_ddp" not in strategy_registry:
            strategy_registry.register(
                "ilo_ddp",
                cls,
                description="ILO: problems sharded across processes, no gradient all-reduce",
            )


ILOStrategy.register_strategies(StrategyRegistry)
