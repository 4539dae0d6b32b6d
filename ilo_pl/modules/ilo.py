"""``ILOModule``: Intermediate Layer Optimization as a LightningModule.

One module solves a stream of problem batches. For each batch it runs the
stage schedule: stage 0 optimises the input variables (CSGM); each later
stage maps the best solution so far to a deeper split with ``G1``, makes that
state the new variable, and optimises it inside l1 balls around its starting
point. Lightning drives the loop: the data module yields each problem batch
once per optimizer step, :class:`~ilo_pl.callbacks.StageTransition` begins the
stages, and the projection callbacks keep variables feasible after every real
step.

The module implements the callbacks' protocols: ``stage_due``/``begin_stage``/
``project_to_range`` (stages), ``l1_constraints`` and ``sphere_constraints``
(projections).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ilo_pl.callbacks.projection import L1BallProjection, SphereProjection
from ilo_pl.callbacks.stage import StageTransition
from ilo_pl.losses.base import LossContext, LossTerm, MSELoss
from ilo_pl.modules.generators.base import SplitGenerator, State
from ilo_pl.problem import ProblemBatch, ProblemResult
from ilo_pl.modules.generators.range import FeasibleSet, computed_entries
from ilo_pl.modules.generators.range import project_to_range as range_projection
from ilo_pl.projections import project_sphere_
from ilo_pl.tracking import BestIterate, rows_finite
from ilo_pl.stages import Stage, check_stages, ramp_lr, stage_losses


_PLAIN = (int, float, str, bool, type(None))

#: Consecutive optimizer steps a sample's gradient may be non-finite under a GradScaler
#: (16-mixed) before it counts as failed: each such step halves the scale, and 25 halvings
#: take any scale a GradScaler reaches in practice (<= 2**24) below 1, where scaling cannot
#: overflow float16.
OVERFLOW_PATIENCE = 25


def _sna_seed(seed: int) -> int:
    """The seed of a problem's SNA noise stream: one LCG step away from the problem's own seeds."""
    return (seed * 6364136223846793005 + 1442695040888963407) % 2**63


def _host_reads_free(t: Tensor) -> bool:
    """Whether reading ``t``'s values on the host costs no device sync (it lives on the CPU).

    The per-step bookkeeping reads small masks on the host there, to skip work
    in the usual cases; on accelerators it stays on the device instead.
    """
    return t.device.type == "cpu"


class ILOModule(pl.LightningModule):
    """Solve inverse problems with a pre-trained generator by ILO.

    Args:
        generator: a frozen :class:`~ilo_pl.modules.generators.base.SplitGenerator`.
        stages: the stage schedule (stage 0 at split 0 is CSGM; a single stage
            is plain CSGM).
        losses: named loss terms; default ``{"mse": MSELoss()}``.
        loss_weights: weight per loss name, used by stages without their own
            ``loss_weights``; default ``{"mse": 1.0}``.
        sna: Stochastic Noise Addition: fresh measurement noise (the
            operator's own noise model) on the generated image's measurement at
            every step; the loss compares the observation with the mean of
            ``sna_samples`` such noisy measurements. The noise comes from one
            generator per problem, seeded from the problem's seed (never the
            global RNG), so SNA results are reproducible and independent of
            batch-mates.
        sna_samples: noise draws averaged per step under SNA. One draw is the
            paper's SNA; with clipped noise (images) its expected loss is
            minimised by an image pushed *past* the truth towards the clipping
            bounds, because the spread of ``clip(G + n)`` shrinks there. The
            mean of many draws matches the observation's expectation
            ``E[clip(x + n)]`` instead, which is minimised at the truth (plain
            MSE is minimised at ``E[clip(x + n)]``, biased towards mid-grey).
            16 draws: +0.8 dB (sigma 50) and +1.9 dB (sigma 100) over no SNA on the evaluation faces
            (``docs/results.md``); the draws cost noise sampling only, not
            generator passes.
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
    ) -> None:
        super().__init__()
        if not isinstance(generator, SplitGenerator):
            raise TypeError(
                f"generator must be a SplitGenerator (see ilo_pl.modules.generators); "
                f"got {type(generator).__name__}"
            )
        stages = [s if isinstance(s, Stage) else Stage(**s) for s in stages]
        check_stages(stages, generator.num_splits)
        self.generator = generator.freeze()
        self.stages = stages
        self.losses = nn.ModuleDict(losses if losses is not None else {"mse": MSELoss()})
        self.loss_weights = dict(loss_weights if loss_weights is not None else {"mse": 1.0})
        for i, st in enumerate(stages):
            unknown = set(stage_losses(st, self.loss_weights)) - set(self.losses)
            if unknown:
                raise ValueError(
                    f"stage {i} weighs loss terms {sorted(unknown)} that are not in `losses` "
                    f"({sorted(self.losses)}); add them to `losses` or remove the weights"
                )
        self.sna = sna
        if isinstance(sna_samples, bool) or not isinstance(sna_samples, int) or sna_samples < 1:
            raise ValueError(f"sna_samples must be an integer >= 1 (1 = the paper's single draw); got {sna_samples!r}")
        self.sna_samples = int(sna_samples)
        self.sphere = sphere
        self.rampup, self.rampdown = rampup, rampdown
        self.project_to_range_enabled = project_to_range
        self.range_steps, self.range_lr = range_steps, range_lr
        self.log_every = max(1, int(log_every))
        if selection not in ("best", "last"):
            raise ValueError(f"selection must be 'best' or 'last'; got {selection!r}")
        self.selection = selection

        self.variables = nn.ParameterDict()
        self._fixed: Dict[str, Tensor] = {}
        self._anchors: Dict[str, Tensor] = {}
        self._l1: List[Tuple[nn.Parameter, Tensor, float]] = []
        self._spheres: List[Tuple[nn.Parameter, Tuple[int, ...]]] = []
        self._key: Optional[tuple] = None
        self._stage = -1
        self._stage_step = 0
        self._problem_step = 0
        self._batch_cache: Optional[Tuple[int, ProblemBatch]] = None
        self._sna_generators: List[torch.Generator] = []  # per problem, set when a problem starts
        # Per-stage constants of the step, set by _install (not rebuilt every step).
        self._groups: Dict[str, str] = {}
        self._weighted: List[Tuple[str, float]] = []
        self.last_result: Optional[ProblemResult] = None
        #: The current problem batch's best iterates and failures (set when a problem starts).
        self.tracker: Optional[BestIterate] = None
        self._closed = False  # whether the current stage's final state was scored
        self._batch: Optional[ProblemBatch] = None
        self._bad_rows: Optional[Tensor] = None  # [B] rows with a non-finite gradient this step (GradScaler)
        self._backoffs: Optional[Tensor] = None  # scale back-offs owed after this step (GradScaler)

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
        if (
            self._stage + 1 < len(self.stages)
            and self._stage_step >= self.stages[self._stage].steps * self._accumulate()
        ):
            return self._stage + 1
        return None

    def begin_stage(self, batch: ProblemBatch, index: int) -> None:
        """Install the variables of stage ``index`` for ``batch``.

        Stage 0 draws the initial variables from each problem's seed. Later
        stages start from the previous stage's best iterate, mapped with
        ``G1`` to the new split; free entries become parameters with their
        starting value as the l1 anchor.
        """
        stage = self.stages[index]
        if index == 0:
            state = self._initial_state(batch)
            if self.sphere:
                # Start on the spheres, so that the stage's anchors (its l1 balls' centres)
                # are feasible: an off-sphere start would be moved by the first projection
                # and spend much of the stage's l1 radius before any optimisation (the norm
                # of a 512-d Gaussian row is ~3% off the sphere's: l1 ~180 for 18 W+ rows).
                for name, dims in self.generator.sphere_variables(0).items():
                    project_sphere_(state[name], dims)
            if stage.split > 0:  # a schedule may start deeper than the input
                with torch.no_grad():
                    state = self.generator.advance(state, 0, stage.split)
            self._key = batch.key
            self._problem_step = 0
            streak = torch.zeros(len(batch), dtype=torch.long, device=self.device)
            self.tracker = BestIterate(len(batch), self.device, self.selection, host_reads=_host_reads_free(streak))
            # Consecutive steps with a non-finite gradient row under a GradScaler (on_after_backward).
            self._bad_streak = streak
            # SNA's noise: one stream per problem, from its seed, so that a problem's result
            # depends neither on its batch-mates nor on what ran before (resume, batch size).
            self._sna_generators = [
                torch.Generator(device=self.device).manual_seed(_sna_seed(int(s))) for s in batch.seeds
            ]
        else:
            prev = self.tracker.records[index - 1]
            with torch.no_grad():
                state = self.generator.advance(prev["state"], self.stages[index - 1].split, stage.split)
        self._install(state, stage)
        self._stage = index
        self._stage_step = 0
        # The stage's feasible set rides along, for project_to_range of a later stage.
        self.tracker.begin_stage(
            state, feasible=FeasibleSet(list(self.variables.keys()), dict(self._balls), dict(self._sphere_dims))
        )
        self._closed = False

    def _initial_state(self, batch: ProblemBatch) -> State:
        # One generator per problem: a problem's start does not depend on its batch-mates.
        parts = [self.generator.init_variables(1, torch.Generator().manual_seed(int(s))) for s in batch.seeds]
        return {k: torch.cat([p[k] for p in parts], 0).to(self.device) for k in parts[0]}

    def _install(self, state: State, stage: Stage) -> None:
        groups = self.generator.groups(stage.split)
        spheres = self.generator.sphere_variables(stage.split) if self.sphere else {}
        self.variables = nn.ParameterDict()
        self._fixed, self._anchors, self._l1, self._spheres = {}, {}, [], []
        self._balls: Dict[str, Tuple[Tensor, float]] = {}
        self._sphere_dims: Dict[str, Tuple[int, ...]] = {}
        for name, value in state.items():
            group = groups[name]
            value = value.detach().to(self.device, torch.float32)
            if not stage.is_free(name, group):
                self._fixed[name] = value
                continue
            param = nn.Parameter(value.clone())
            self.variables[name] = param
            radius = stage.radius_of(name, group)
            if math.isfinite(radius):
                self._anchors[name] = value.clone()
                self._l1.append((param, self._anchors[name], radius))
                self._balls[name] = (self._anchors[name], radius)
            if name in spheres:
                self._spheres.append((param, tuple(spheres[name])))
                self._sphere_dims[name] = tuple(spheres[name])
        if not self.variables:
            raise ValueError(
                f"stage at split {stage.split} frees no variable: its `free` {stage.free} matches "
                f"none of {sorted(state)} (groups {sorted(set(groups.values()))})"
            )
        self._groups = groups
        self._weighted = [(n, w) for n, w in stage_losses(stage, self.loss_weights).items() if w != 0]

    def project_to_range(self, batch: ProblemBatch, index: int) -> None:
        """Algorithm 1, line 5: pull stage ``index - 1``'s solution into the range of the earlier layers.

        Replaces the activations of stage ``index - 1``'s best state by
        ``G1(u)``, ``u`` the state inside stage ``index - 2``'s feasible set
        (its free entries, l1 balls and spheres) that comes closest (see
        :func:`~ilo_pl.modules.generators.range.project_to_range`). The
        stage's record then holds the projected state *and* its image and
        noiseless measurement error, so a solution always renders to its
        image and its loss is that solution's. A sample whose projection is
        not finite keeps its unprojected solution.

        Args:
            batch: the problem batch (its operator and observation score the result).
            index: the stage about to begin (nothing to do for ``index < 2``).
        """
        if index < 2:
            return
        src, dst = self.stages[index - 2], self.stages[index - 1]
        src_rec, dst_rec = self.tracker.records[index - 2], self.tracker.records[index - 1]
        target = dst_rec["state"]
        computed = computed_entries(self.generator, dst.split)
        if not computed:  # e.g. two CSGM rounds at split 0: no activation to project
            return
        merged, _ = range_projection(
            self.generator, src_rec["state"], src.split, src_rec["extra"]["feasible"], target, dst.split,
            steps=self.range_steps, lr=self.range_lr,
        )
        with torch.no_grad():
            image = self.generator.render(merged, dst.split).float()
            err = batch.operator.measurement_error(batch.operator.A(image), batch.observation)
            self.tracker.replace(index - 1, merged, image, err, render=lambda st: self.generator.render(st, dst.split))

    # ------------------------------------------------------------ projections
    def l1_constraints(self) -> Iterable[Tuple[nn.Parameter, Tensor, float]]:
        """``(parameter, anchor, radius)`` for every l1-constrained variable of the stage."""
        return self._l1

    def sphere_constraints(self) -> Iterable[Tuple[nn.Parameter, Tuple[int, ...]]]:
        """``(parameter, dims)`` for every sphere-constrained variable of the stage."""
        return self._spheres

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

    # -------------------------------------------------------------- optimisation
    def current_state(self) -> Dict[str, Tensor]:
        """The full state at the current split: variables and fixed entries."""
        return {**self._fixed, **dict(self.variables.items())}

    def configure_optimizers(self) -> Dict[str, Any]:
        params = list(self.variables.values())
        if not params:
            # Before the first batch there are no variables yet; the first
            # stage transition rebuilds the optimizer over the real ones.
            params = [nn.Parameter(torch.zeros(1, device=self.device))]
        stage = self.stages[max(self._stage, 0)]
        opt = torch.optim.Adam(params, lr=stage.lr)
        steps = stage.steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: ramp_lr(min(1.0, (i + 0.5) / steps), self.rampup, self.rampdown)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # The same problem batch comes once per step: move it once, not every step.
        if isinstance(batch, ProblemBatch):
            if self._batch_cache is not None and self._batch_cache[0] is batch:
                return self._batch_cache[1]
            moved = batch.to(device)
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
        measured = self._sna_measure(op, image) if sna else op.A(image)
        err = op.measurement_error(measured, y)
        ctx = LossContext(image=image, measured=measured, observation=y, operator=op,
                          state=state, groups=groups, split=stage.split, measurement_error=err)
        per_sample: Optional[Tensor] = None
        logs = {}
        for name, weight in self._weighted:
            term = self.losses[name](ctx).float()
            weighted = term if weight == 1.0 else weight * term
            per_sample = weighted if per_sample is None else per_sample + weighted
            logs[name] = term
        if per_sample is None:
            per_sample = image.new_zeros(len(batch), dtype=torch.float32)
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
            self.log("loss", loss.detach() / len(batch), prog_bar=True, on_step=True, batch_size=len(batch))
            self.log("stage", float(self._stage), prog_bar=True, on_step=True, batch_size=len(batch))
            for name, term in logs.items():
                self.log(f"loss/{name}/stage{self._stage}", term.detach().mean(), on_step=True, batch_size=len(batch))
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step (closure, scaler, projections in the step post-hooks), then the stage's bookkeeping.

        ``training_step`` scores the iterate it renders, i.e. the state
        *before* this step; the state after a stage's last step would go
        unscored. So when this step ends a stage, that final, projected state
        is scored here too (one more ``G2`` pass per stage); when it ends the
        problem, the result is assembled, before any callback's
        ``on_train_batch_end`` reads ``last_result``.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self._back_off_scale()
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
            self.last_result = self.tracker.compute(batch, splits, self.generator.render)

    def _sna_measure(self, op: Any, image: Tensor) -> Tensor:
        """The SNA measurement: the mean of ``sna_samples`` fresh noisy measurements of ``image``.

        ``A`` runs once. Each problem draws its noise from its own generator
        (seeded from its seed when the problem starts), all of its draws in one
        call on a ``[sna_samples, ...]`` view of its measurement. That is one
        call per problem per step, the only per-problem loop of a step: PyTorch
        has no batched per-row random streams, and a single stream for the
        batch would make each result depend on the batch's composition.
        """
        ax = op.A(image)
        k = self.sna_samples
        return torch.cat([
            op.noise(ax[b : b + 1].expand(k, *ax.shape[1:]), g).mean(0, keepdim=True)
            for b, g in enumerate(self._sna_generators)
        ])

    def _scaler(self) -> Any:
        """The precision plugin's enabled ``GradScaler`` (16-mixed), or ``None``."""
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    @torch.no_grad()
    def on_after_backward(self) -> None:
        # With a GradScaler (16-mixed) one sample's inf/NaN gradient would make the scaler
        # skip the step for the whole batch. So, on the still-scaled gradients, before the
        # scaler inspects them, the rows of a sample that failed or whose gradient is
        # non-finite are zeroed: its batch-mates step as if alone, and it gets no gradient
        # this step (Adam's momentum still moves it a little, unlike a skipped step).
        # Runs per micro-batch; the streak and the scale back-off are per optimizer step
        # (on_before_optimizer_step, _back_off_scale).
        if self.tracker is None or self._scaler() is None:
            return
        params = [p for p in self.variables.values() if p.grad is not None]
        if not params:
            return
        bad = ~rows_finite([p.grad for p in params])
        self._bad_rows = bad if self._bad_rows is None else self._bad_rows | bad
        drop = bad | self.tracker.failed
        if _host_reads_free(drop) and not bool(drop.any()):
            return
        for p in params:  # (NaN rows: masked_fill, not mul)
            p.grad.masked_fill_(drop.view(-1, *([1] * (p.grad.dim() - 1))), 0.0)

    @torch.no_grad()
    def _count_overflows(self) -> None:
        """Per optimizer step under a GradScaler: streaks of non-finite rows, failures, the back-off flag.

        A healthy sample's non-finite row is taken for an fp16 overflow: the
        scale backs off after the step, as the scaler would have done. After
        :data:`OVERFLOW_PATIENCE` such steps in a row it is a failure (marked
        at the step its streak began), and the back-offs it caused are undone,
        so the scale its batch-mates (and later problems) run at is as if it
        had never been there. Device ops only.
        """
        bad, self._bad_rows = self._bad_rows, None
        if bad is None:
            return
        bad = bad & ~self.tracker.failed
        self._bad_streak = torch.where(bad, self._bad_streak + 1, 0)
        newly = self._bad_streak >= OVERFLOW_PATIENCE
        began = max(0, self._stage_step - 1 - (OVERFLOW_PATIENCE - 1) * self._accumulate())
        self.tracker.mark_failed(newly, began)
        self._backoffs = (bad & ~newly).any().to(torch.float32) - newly.any() * (OVERFLOW_PATIENCE - 1.0)

    @torch.no_grad()
    def _back_off_scale(self) -> None:
        """After the step: scale the scaler's scale by ``backoff ** self._backoffs`` (see :meth:`_count_overflows`)."""
        n, self._backoffs = self._backoffs, None
        scaler = self._scaler()
        if n is None or scaler is None:
            return
        factor = scaler.get_backoff_factor()
        if _host_reads_free(n):
            k = float(n)
            if k != 0.0:
                scaler.update(new_scale=scaler.get_scale() * factor**k)
            return
        # The scale tensor itself (private): get_scale() would read it to the host every step.
        scale = scaler._scale
        scaler.update(new_scale=scale * torch.pow(torch.tensor(factor, device=scale.device), n.to(scale.device)))

    @torch.no_grad()
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # A failed sample (non-finite loss or gradient) keeps its last finite
        # iterate: zero its gradient rows, so NaN never reaches Adam or the
        # projections and its batch-mates go on as if alone. Device ops only
        # (no host sync). With a GradScaler the rows were dropped before it
        # unscaled the gradients (on_after_backward); here the streaks are counted.
        if self.tracker is None:
            return
        grads = [p.grad for p in self.variables.values() if p.grad is not None]
        if self._scaler() is not None:
            self._count_overflows()
        else:
            self.tracker.check_gradients(grads, self._stage_step - 1)
        self.tracker.zero_failed_(grads)
