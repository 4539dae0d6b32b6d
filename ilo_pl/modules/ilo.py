"""``ILOModule``: Intermediate Layer Optimization as a LightningModule: the schedule, the step, the hooks.

For each problem batch, stage 0 optimises the input variables (CSGM); each
later stage maps the best solution so far to a deeper split with ``G1`` and
optimises that state inside l1 balls around its start. The data module yields
each batch once per optimizer step; :class:`~ilo_pl.callbacks.StageTransition`
begins the stages and the projection callbacks keep variables feasible (the
module implements their protocols, :mod:`ilo_pl.callbacks.protocols`). Its
parts: :mod:`~ilo_pl.modules.variables` (a stage's variables),
:mod:`~ilo_pl.modules.tracking` (best iterates, failures), :mod:`~ilo_pl.modules.sna`,
:mod:`~ilo_pl.modules.overflow` (float16 overflows), :mod:`~ilo_pl.modules.restarts` and
:mod:`~ilo_pl.modules.finish` (restarts, the final consistency step).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Literal, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ilo_pl.callbacks.projection import L1BallProjection, SphereProjection
from ilo_pl.callbacks.stage import StageTransition
from ilo_pl.compat import attached_trainer, grad_scaler
from ilo_pl.losses.base import LossContext, LossTerm, MeasurementLoss, weighted_sum
from ilo_pl.modules.finish import check_options, check_setup, finish, keep_best_, prepare
from ilo_pl.modules.generators.base import SplitGenerator, State
from ilo_pl.modules.overflow import OverflowGuard
from ilo_pl.modules.sna import NoiseDraws
from ilo_pl.modules.step_logs import log_step
from ilo_pl.modules.tracking import BestIterate
from ilo_pl.modules.variables import StageVariables, initial_state, project_stage_to_range, stage_variables
from ilo_pl.policy import host_reads_free
from ilo_pl.problem import ProblemBatch, ProblemResult
from ilo_pl.stages import Stage, check_stage_losses, check_stage_names, check_stages, stage_losses, stage_optimizer

_PLAIN = (int, float, str, bool, type(None))


class ILOModule(pl.LightningModule):
    """Solve inverse problems with a pre-trained generator by ILO.

    Args:
        generator: a frozen :class:`~ilo_pl.modules.generators.base.SplitGenerator`.
        stages: the stage schedule (stage 0 at split 0 is CSGM; a single stage
            is plain CSGM).
        losses: named loss terms; default ``{"mse": MeasurementLoss()}``.
        loss_weights: weight per loss name, used by stages without their own
            ``loss_weights``; default ``{"mse": 1.0}``.
        sna: Stochastic Noise Addition (:mod:`ilo_pl.modules.sna`): the loss compares
            the observation with the mean of ``sna_samples`` fresh noisy
            measurements (the operator's noise model) of the generated image,
            drawn from per-problem streams seeded from each problem's seed.
        sna_samples: noise draws averaged per step under SNA (1 = the paper's
            single draw; 16 is minimised at the truth, see :mod:`ilo_pl.modules.sna`).
        sphere: keep the generator's sphere variables (``sphere_variables``)
            on their sphere after every step (PULSE-style).
        rampup: fraction of each stage with a linear learning-rate ramp-up.
        rampdown: fraction of each stage with a cosine ramp-down.
        project_to_range: before each deeper stage, pull the solution back into
            the range of the earlier layers (Algorithm 1, line 5).
        range_steps: Adam steps of that projection.
        range_lr: its learning rate.
        log_every: log losses every this many steps (logging is not free).
        selection: which iterate each stage hands on and the solve returns:
            ``"best"`` (lowest noiseless measurement error, over all stages) or
            ``"last"`` (each stage's final iterate; the last stage's is
            returned). With SNA the trajectory is noisy, and picking its
            best-fitting point selects iterates that fit the noise: use ``"last"``.
        restarts: initial latents per problem, solved side by side; each problem returns the one with
            the lowest measurement loss (:mod:`~ilo_pl.modules.restarts`; 1: a single start).
        restart_keep: run the stages after the first on each problem's best ``K`` restarts only
            (by measurement loss after the first stage); default: all.
        restart_average: return the pixel mean of each problem's best ``K`` restarts (often lower
            MSE, less sharp, not in the generator's range); 1: the best restart.
        consistency: a final step towards the observation, for operators with an adjoint
            (:mod:`~ilo_pl.operators.consistency`): ``"project"`` (``A x = y`` exactly),
            ``"prox"`` (a proximal step with the known noise level) or ``"none"``.
    """

    def __init__(
        self,
        generator: SplitGenerator,
        stages: List[Stage],
        losses: Optional[Dict[str, LossTerm]] = None,
        loss_weights: Optional[Dict[str, float]] = None,
        sna: bool = False,
        sphere: bool = False,
        sna_samples: int = 16,
        rampup: float = 0.05,
        rampdown: float = 0.25,
        project_to_range: bool = False,
        range_steps: int = 100,
        range_lr: float = 0.05,
        log_every: int = 10,
        selection: str = "best",
        restarts: int = 1,
        restart_keep: Optional[int] = None,
        restart_average: int = 1,
        consistency: Literal["none", "project", "prox"] = "none",
    ) -> None:
        super().__init__()
        if not isinstance(generator, SplitGenerator):
            raise TypeError(
                f"generator must be a SplitGenerator (see ilo_pl.modules.generators); "
                f"got {type(generator).__name__}"
            )
        stages = [s if isinstance(s, Stage) else Stage(**s) for s in stages]
        check_stages(stages, generator.num_splits)
        check_stage_names(stages, generator)
        self.generator = generator.freeze()
        self.stages = stages
        self.losses = nn.ModuleDict(losses if losses is not None else {"mse": MeasurementLoss()})
        self.loss_weights = dict(loss_weights if loss_weights is not None else {"mse": 1.0})
        check_stage_losses(stages, self.loss_weights, list(self.losses))
        self.sna = sna
        self.noise_draws = NoiseDraws(sna_samples)  # validates sna_samples
        self.sna_samples = self.noise_draws.samples
        self.sphere = sphere
        self.rampup, self.rampdown = rampup, rampdown
        self.project_to_range_enabled = project_to_range
        self.range_steps, self.range_lr = range_steps, range_lr
        self.log_every = max(1, int(log_every))
        if selection not in ("best", "last"):
            raise ValueError(f"selection must be 'best' or 'last'; got {selection!r}")
        self.selection = selection
        self.restarts, self.restart_keep, self.restart_average, self.consistency = check_options(
            restarts, restart_keep, consistency, len(stages), restart_average)

        self.variables = nn.ParameterDict()
        self._vars = StageVariables(self.variables)
        self._key: Optional[tuple] = None
        self._stage = -1
        self._stage_step = 0
        self._problem_step = 0
        self._batch_cache: Optional[Tuple[int, ProblemBatch]] = None
        # Per-stage constants of the step, set by _install (not rebuilt every step).
        self._groups: Dict[str, str] = {}
        self._weighted: List[Tuple[str, float]] = []
        self.last_result: Optional[ProblemResult] = None
        #: The current problem batch's best iterates and failures (set when a problem starts).
        self.tracker: Optional[BestIterate] = None
        self._closed = False  # whether the current stage's final state was scored
        self._batch: Optional[ProblemBatch] = None
        #: Per-sample float16 overflow streaks under a GradScaler (set when a problem starts).
        self.overflow: Optional[OverflowGuard] = None

    def __setattr__(self, name: str, value: Any) -> None:
        # Fast path for plain attributes that already exist (counters, flags, and the hook
        # name Lightning sets ~25 times per step): nn.Module.__setattr__ runs several
        # isinstance checks first. Names of parameters, buffers and submodules never live
        # in __dict__, so they still take the full path.
        if type(value) in _PLAIN and name in self.__dict__:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ schedule
    @property
    def steps_per_problem(self) -> int:
        """Optimizer steps spent on one problem batch (all stages)."""
        return sum(s.steps for s in self.stages)

    @property
    def stage_index(self) -> int:
        """Index of the current stage (-1 before the first problem)."""
        return self._stage

    @property
    def split(self) -> int:
        """The current split point."""
        return self.stages[max(self._stage, 0)].split

    def _accumulate(self) -> int:
        try:
            return int(self.trainer.accumulate_grad_batches)
        except RuntimeError:  # not attached to a trainer
            return 1

    # ------------------------------------------------------- StageTransition protocol
    def stage_due(self, batch: ProblemBatch) -> Optional[int]:
        """Which stage must begin before ``batch`` (``None``: the current one goes on)."""
        if batch.key != self._key:
            return 0
        last = self._stage + 1 >= len(self.stages)
        return None if last or self._stage_step < self.stages[self._stage].steps * self._accumulate() else self._stage + 1

    def begin_stage(self, batch: ProblemBatch, index: int) -> None:
        """Install stage ``index``'s variables: stage 0 draws them from each problem's seed, later
        stages map the previous stage's kept iterate to the new split with ``G1``."""
        stage = self.stages[index]
        if index == 0:
            state = initial_state(self.generator, batch.seeds, stage.split, self.sphere, self.device, batch.labels)
            self._key = batch.key
            self._problem_step = 0
            reads = host_reads_free(self.device)  # the policy, read once per problem batch
            self.tracker = BestIterate(len(batch), self.device, self.selection, host_reads=reads)
            self.overflow = OverflowGuard(len(batch), self.device, host_reads=reads)
            self.noise_draws.start(batch.seeds, self.device)
        else:
            keep_best_(self, batch, self.restart_keep if index == 1 else None)  # restarts pruned after stage 0
            prev = self.tracker.records[index - 1]
            with torch.no_grad():
                state = self.generator.advance(prev["state"], self.stages[index - 1].split, stage.split)
        self._install(state, stage)
        self._stage = index
        self._stage_step = 0
        # The stage's feasible set rides along, for project_to_range of a later stage.
        self.tracker.begin_stage(state, feasible=self._vars.feasible)
        self._closed = False

    def _install(self, state: State, stage: Stage) -> None:
        spheres = self.generator.sphere_variables(stage.split) if self.sphere else {}
        self._groups = self.generator.groups(stage.split)
        self._vars = stage_variables(state, stage, self._groups, spheres, self.device)
        self.variables = self._vars.params
        self._weighted = [(n, w) for n, w in stage_losses(stage, self.loss_weights).items() if w != 0]

    def project_to_range(self, batch: ProblemBatch, index: int) -> None:
        """Algorithm 1, line 5: pull stage ``index - 1``'s solution into the range of the earlier layers
        (:func:`~ilo_pl.modules.variables.project_stage_to_range`)."""
        project_stage_to_range(self.generator, self.tracker, self.stages, batch, index, self.range_steps, self.range_lr)

    # ------------------------------------------------------------ projections
    def l1_constraints(self) -> Iterable[Tuple[nn.Parameter, Tensor, float]]:
        """``(parameter, anchor, radius)`` for every l1-constrained variable of the stage."""
        return self._vars.l1

    def sphere_constraints(self) -> Iterable[Tuple[nn.Parameter, Tuple[int, ...]]]:
        """``(parameter, dims)`` for every sphere-constrained variable of the stage."""
        return self._vars.spheres

    def configure_callbacks(self) -> List[pl.Callback]:
        # The callbacks ILO cannot run without; a trainer's own instances of
        # these types are replaced by these (Lightning's rule). Without sphere
        # constraints (``sphere=False``) SphereProjection would be a no-op that
        # Lightning still calls at every hook of every step: left out.
        callbacks: List[pl.Callback] = [StageTransition(project_to_range=self.project_to_range_enabled)]
        if self.sphere:
            callbacks.append(SphereProjection())
        callbacks.append(L1BallProjection())
        return callbacks

    def setup(self, stage: str) -> None:
        check_setup(self)  # a consistency step the data's operator cannot take: refused before any problem

    # -------------------------------------------------------------- optimisation
    def current_state(self) -> Dict[str, Tensor]:
        """The full state at the current split: variables and fixed entries."""
        return self._vars.state()

    def configure_optimizers(self) -> Optional[Dict[str, Any]]:
        params = list(self.variables.values())
        if not params:  # before the first stage: StageTransition installs the real one
            return None
        return stage_optimizer(params, self.stages[max(self._stage, 0)], self.rampup, self.rampdown)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # The same problem batch comes once per step: move it once, not every step.
        if isinstance(batch, ProblemBatch):
            if self._batch_cache is not None and self._batch_cache[0] is batch:
                return self._batch_cache[1]
            moved = prepare(self, batch.to(device))  # (expanded to the restarts: the rows solved)
            self._batch_cache = (batch, moved)
            return moved
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: ProblemBatch, batch_idx: int) -> Tensor:
        if self._stage < 0 or batch.key != self._key:
            raise RuntimeError(
                "ILOModule got a batch before its stage was set up: the StageTransition callback "
                "is missing (it is added by configure_callbacks; do not remove it)"
            )
        stage = self.stages[self._stage]
        state = self.current_state()
        groups = self._groups
        image = self.generator.render(state, stage.split)
        op, y = batch.operator, batch.observation
        sna = self.sna if stage.sna is None else stage.sna
        measured = self.noise_draws.measure(op, image) if sna else op.A(image)
        err = op.measurement_error(measured, y)
        ctx = LossContext(image=image, measured=measured, observation=y, operator=op,
                          state=state, groups=groups, split=stage.split, measurement_error=err)
        per_sample, logs = weighted_sum(self.losses, self._weighted, ctx, len(batch))
        if sna:  # rank iterates by the noiseless measurement, not by the noise drawn
            err = op.measurement_error(op.A(image), y)
        all_finite = self.tracker.update(image, err, per_sample, state, self.variables.keys(), self._stage_step)
        # Sum over samples (never average): a sample's step is the same in any batch.
        # A non-finite sample contributes nothing (it keeps its last finite iterate).
        loss = per_sample.sum() if all_finite else torch.where(torch.isfinite(per_sample), per_sample, 0.0).sum()
        self._stage_step += 1
        self._problem_step += 1
        self._batch = batch  # for optimizer_step's evaluation of the stepped state
        if self._problem_step % self.log_every == 0:
            log_step(self, loss, logs, len(batch), self._stage)  # no per-step host sync: see step_logs
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step (closure, scaler, projections in the step post-hooks), then the stage's bookkeeping.

        ``training_step`` scores the state *before* each step, so a stage's
        final, projected state is scored here (one more ``G2`` pass per stage);
        at the problem's end the result is assembled, before any callback's
        ``on_train_batch_end`` reads ``last_result``.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.overflow is not None:
            self.overflow.back_off(grad_scaler(attached_trainer(self)))
        if self._stage < 0 or self._closed:
            return
        acc = self._accumulate()
        if self._stage_step < self.stages[self._stage].steps * acc:
            return
        self._closed = True
        batch = self._batch
        # Rendered in the precision the steps' iterates were (autocast under mixed precision),
        # so that all of a stage's iterates compete on equal terms.
        with torch.no_grad(), self.trainer.precision_plugin.train_step_context():
            state = self.current_state()
            image = self.generator.render(state, self.stages[self._stage].split)
            err = batch.operator.measurement_error(batch.operator.A(image), batch.observation)
            self.tracker.update(image, err, torch.zeros_like(err, dtype=torch.float32), state, self.variables.keys(), self._stage_step)
        if self._problem_step == self.steps_per_problem * acc:
            splits = [s.split for s in self.stages]
            self.last_result = finish(self, self.tracker.compute(batch, splits, self.generator.render))

    @torch.no_grad()
    def on_after_backward(self) -> None:
        # Under a GradScaler (16-mixed), before it inspects the still-scaled gradients:
        # drop the rows of failed or overflowing samples (ilo_pl.modules.overflow).
        if self.tracker is not None and grad_scaler(attached_trainer(self)) is not None:
            grads = [p.grad for p in self.variables.values() if p.grad is not None]
            self.overflow.drop_rows_(grads, self.tracker.failed)

    @torch.no_grad()
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # A failed sample (non-finite loss or gradient) keeps its last finite iterate: its
        # gradient rows are zeroed, so its batch-mates go on as if alone (ilo_pl.modules.tracking;
        # under a GradScaler, ilo_pl.modules.overflow counts the streaks). Device ops only.
        if self.tracker is None:
            return
        grads = [p.grad for p in self.variables.values() if p.grad is not None]
        if grad_scaler(attached_trainer(self)) is not None:
            self.overflow.count(self.tracker, self._stage_step, self._accumulate())
        else:
            self.tracker.check_gradients(grads, self._stage_step - 1)
        self.tracker.zero_failed_(grads)
