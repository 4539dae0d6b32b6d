"""What the timing benchmarks share: where they run, the floor step, step timers, the bare-Lightning step.

Used by ``speed`` (every section), ``op_count`` and ``floor_placement``:

* :class:`Bench`: the device and the timing mode (``step``: each step timed,
  ILO and floor steps interleaved; ``block``: each stage's steady-state
  steps timed as one block between two synchronisations);
* :func:`make_generator`, :func:`stages_for`, :func:`make_problem`: the
  generators, one-stage schedules and problems the timings run;
* :class:`FloorStep`: the *floor*, a bare PyTorch step doing only the G2
  forward, loss, backward and Adam step of an ILO step;
* :class:`StepTimer`: times ILO steps inside ``Trainer.fit`` and runs floor
  steps beside them; :func:`time_solve` runs one timed solve;
* :class:`BareLightning`, :func:`time_bare_lightning`: the floor's step run by
  Lightning with no ILO code (Lightning's own per-step cost);
* :func:`summary`: medians per stage and the ILO/floor ratios of a timing;
* :class:`LoopClock`: wall time of a whole training loop.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch

from benchmarks.common import SHARED
from ilo_pl.api import solve
from ilo_pl.modules.generators.base import SplitGenerator
from ilo_pl.operators import RandomMask
from ilo_pl.operators.base import Operator
from ilo_pl.stages import Stage

#: The tiny StyleGAN-2 checkpoint of the rosinality port (``sg2-tiny``).
FIXTURE = SHARED / "fixtures" / "stylegan2_rosinality_tiny.pt"

#: l1 radius of the DCGAN state in single-split measurements: small enough that
#: the projection is active on (nearly) every step, the expensive case.
DCGAN_STATE_RADIUS = 100.0
#: StyleGAN-2 radii per group (the paper's first-stage values; state: its second stage's).
SG2_RADII = {"latent": 300.0, "noise": 300.0, "state": 500.0}


@dataclasses.dataclass(frozen=True)
class Bench:
    """Where and how the benchmark runs.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``: the trainer's accelerator and where
            the generator, the problem and the floor live.
        timing: ``"step"`` (each step timed, ILO and floor steps interleaved)
            or ``"block"`` (each stage's steady-state steps timed as one block
            between two synchronisations, then a block of floor steps).
    """

    device: str = "cpu"
    timing: str = "step"

    @property
    def clock(self) -> str:
        """The clock the ratio columns use: CPU time on the CPU, wall time on a GPU."""
        return "wall" if self.device == "cuda" else "cpu"

    def sync(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""
        if self.device == "cuda":
            torch.cuda.synchronize()

    def trainer_kwargs(self) -> Dict[str, Any]:
        """The ``pl.Trainer`` arguments that put the solve on :attr:`device`."""
        return {"accelerator": "gpu" if self.device == "cuda" else "cpu"}


CPU = Bench()


# ------------------------------------------------------------------------ set-up
def make_generator(name: str) -> SplitGenerator:
    """``dcgan`` (embedded weights), ``sg2-tiny`` (the shared fixture) or ``sg2-<size>`` (random init, e.g. ``sg2-256``)."""
    torch.manual_seed(0)
    if name == "dcgan":
        from ilo_pl.modules.generators import DCGANGenerator

        return DCGANGenerator()
    from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator

    if name == "sg2-tiny":
        path = FIXTURE if FIXTURE.is_file() else Path("/work/shared/fixtures/stylegan2_rosinality_tiny.pt")
        if not path.is_file():
            raise FileNotFoundError(f"StyleGAN-2 fixture {FIXTURE} is missing; it ships in ../shared/fixtures")
        return StyleGAN2Generator.from_checkpoint(path, mean_latent_samples=256)
    if name == "sg2-256":
        return StyleGAN2Generator(size=256, style_dim=512, n_mlp=8, mean_latent_samples=256)
    if name.startswith("sg2-") and name[4:].isdigit():  # e.g. sg2-1024: config-f widths, random weights
        return StyleGAN2Generator(size=int(name[4:]), style_dim=512, n_mlp=8, mean_latent_samples=256)
    raise ValueError(f"unknown generator {name!r}; choose dcgan, sg2-tiny or sg2-<size> (e.g. sg2-256)")


def stages_for(name: str, split: int, steps: int) -> Tuple[List[Stage], Dict[str, Any]]:
    """One stage at ``split`` freeing every entry there, and the module options, per generator family."""
    if name == "dcgan":
        radius = {"state": DCGAN_STATE_RADIUS} if split > 0 else {}
        return [Stage(split=split, steps=steps, lr=0.05, free=["state", "latent"], radius=radius)], {}
    radius = {g: r for g, r in SG2_RADII.items() if split > 0 or g != "state"}
    return [Stage(split=split, steps=steps, lr=0.05, free=["state", "latent", "noise"], radius=radius)], {"sphere": True}


def make_problem(gen: SplitGenerator, batch: int, seed: int = 0) -> Tuple[Operator, torch.Tensor]:
    """A batched random-inpainting problem (half the pixels seen) on images drawn from ``gen``, on its device."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = gen.render(gen.init_variables(batch, g), 0).float()
    op = Operator.stack([RandomMask(0.5).build(gen.image_shape, seed + i) for i in range(batch)]).to(x.device)
    with torch.no_grad():
        y = op.A(x)
    return op, y


# ------------------------------------------------------------------------ the floor
class FloorStep:
    """A bare PyTorch step: G2 forward, loss, backward, Adam step; nothing else.

    Args:
        gen: the generator.
        state: the state at ``split`` (copied); entries named in ``free`` are optimised.
        free: names of the optimised entries.
        split: the split point.
        operator: the batched operator.
        observation: the observations.
        lr: Adam's learning rate.
    """

    def __init__(self, gen, state, free, split, operator, observation, lr) -> None:  # noqa: ANN001
        self.gen, self.split, self.op, self.y = gen, split, operator, observation
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in state.items() if k in free}
        self.fixed = {k: v.detach().clone() for k, v in state.items() if k not in free}
        self.opt = torch.optim.Adam(list(self.params.values()), lr=lr)

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        image = self.gen.render({**self.fixed, **self.params}, self.split)
        loss = self.op.measurement_error(self.op.A(image), self.y).sum()
        loss.backward()
        self.opt.step()


class StepTimer(pl.Callback):
    """Times ILO steps inside ``Trainer.fit`` and runs floor steps for comparison.

    Step timing (``bench.timing == "step"``): ``ilo[i]`` is the time from the
    end of this hook at step ``i`` to its start at step ``i + 1``: everything
    Lightning does for one step; one floor step runs inside each hook, so ILO
    and floor steps alternate and see the same machine load. A stage's first
    step (our hook runs before the stage transition) is recorded with stage
    ``-1``.

    Block timing (``"block"``): per stage, the steps from index ``warmup`` to
    the stage's second-to-last are timed as one block between two
    synchronisations (the stage's position comes from ``trainer.global_step``,
    so when the stage transition runs does not matter); then, inside the hook,
    as many floor steps run as a block after ``warmup`` untimed ones. Each
    timed step gets one entry holding its block's per-step mean.

    Put this callback before ILO's own callbacks so their hooks fall inside
    the interval. Entries are ``(stage, wall_s, cpu_s)``.

    Args:
        with_floor: also run floor steps.
        bench: device and timing mode.
        warmup: block timing only: steps left out at the start of each stage.
    """

    def __init__(self, with_floor: bool = True, bench: Bench = CPU, warmup: int = 2) -> None:
        super().__init__()
        self.with_floor, self.bench, self.warmup = with_floor, bench, warmup
        self.ilo: List[Tuple[int, float, float]] = []
        self.floor: List[Tuple[int, float, float]] = []
        self._last: Optional[Tuple[float, float]] = None
        self._floor: Optional[FloorStep] = None
        self._stage = -1

    def _make_floor(self, pl_module: Any, stage: int, batch: Any) -> FloorStep:
        spec = pl_module.stages[stage]
        return FloorStep(
            pl_module.generator, pl_module.current_state(), set(pl_module.variables.keys()),
            spec.split, batch.operator, batch.observation, spec.lr,
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.bench.timing == "block":
            self._block_hook(trainer, pl_module, batch)
            return
        now = (time.perf_counter(), time.process_time())
        stage = pl_module.stage_index
        same = stage == self._stage
        if self._last is not None:
            self.ilo.append((stage if same else -1, now[0] - self._last[0], now[1] - self._last[1]))
        self._stage = stage
        if self.with_floor and stage >= 0:
            if self._floor is None or not same:
                self._floor = self._make_floor(pl_module, stage, batch)
            t0 = (time.perf_counter(), time.process_time())
            self._floor()
            self.floor.append((stage, time.perf_counter() - t0[0], time.process_time() - t0[1]))
        self._last = (time.perf_counter(), time.process_time())

    def _block_hook(self, trainer, pl_module, batch) -> None:  # noqa: ANN001
        step, stage, first = trainer.global_step, 0, 0
        for stage, spec in enumerate(pl_module.stages):  # the stage this step belongs to
            if step < first + spec.steps:
                break
            first += spec.steps
        pos, steps = step - first, pl_module.stages[stage].steps
        timed = steps - 1 - self.warmup
        if timed < 1:
            raise ValueError(f"block timing needs stages of at least warmup + 2 = {self.warmup + 2} steps; "
                             f"stage {stage} has {steps}")
        if pos == self.warmup:
            self.bench.sync()
            self._last = (time.perf_counter(), time.process_time())
        elif pos == steps - 1 and self._last is not None:
            self.bench.sync()
            now = (time.perf_counter(), time.process_time())
            # One entry per timed step, each the block's mean: step counts and pooled medians stay meaningful.
            self.ilo += [(stage, (now[0] - self._last[0]) / timed, (now[1] - self._last[1]) / timed)] * timed
            self._last = None
            if self.with_floor:
                floor = self._make_floor(pl_module, stage, batch)
                for _ in range(self.warmup):
                    floor()
                self.bench.sync()
                t0 = (time.perf_counter(), time.process_time())
                for _ in range(timed):
                    floor()
                self.bench.sync()
                self.floor += [(stage, (time.perf_counter() - t0[0]) / timed, (time.process_time() - t0[1]) / timed)] * timed


def time_solve(
    gen: SplitGenerator, stages: Sequence[Stage], batch: int, warmup: int = 2, with_floor: bool = True,
    bench: Bench = CPU, **module_kw: Any,
) -> Dict[int, Dict[str, List[float]]]:
    """Run one ILO solve; per stage, the steady-state ILO and floor step times (s).

    The first ``warmup`` steps of each stage are dropped (its set-up step always is).
    """
    op, y = make_problem(gen, batch)
    timer = StepTimer(with_floor, bench, warmup)
    solve(gen, op, y, list(stages), callbacks=[timer], trainer_kwargs=bench.trainer_kwargs(), **module_kw)
    return _by_stage(timer, 0 if bench.timing == "block" else warmup)


def _by_stage(timer: "StepTimer", warmup: int) -> Dict[int, Dict[str, List[float]]]:
    """A timer's step times per stage, without each stage's first ``warmup`` steps (nor its set-up step)."""
    out: Dict[int, Dict[str, List[float]]] = {}
    for kind, rows in (("ilo", timer.ilo), ("floor", timer.floor)):
        seen: Dict[int, int] = {}
        for stage, wall, cpu in rows:
            if stage < 0:
                continue
            seen[stage] = seen.get(stage, 0) + 1
            if seen[stage] <= warmup:
                continue
            acc = out.setdefault(stage, {"ilo": [], "ilo_cpu": [], "floor": [], "floor_cpu": []})
            acc[kind].append(wall)
            acc[kind + "_cpu"].append(cpu)
    return out


class BareLightning(pl.LightningModule):
    """The floor's step run by Lightning with no ILO code: Lightning's own per-step cost.

    Same trainer settings as :func:`ilo_pl.api.solve`, the same G2 forward,
    loss, backward and Adam step; no callbacks but the timer, no projection, no schedule, no
    tracking, no logging. Offers what :class:`StepTimer` reads
    (``stage_index``, ``stages``, ``generator``, ``current_state``, ``variables``).
    """

    def __init__(self, gen: SplitGenerator, state: Dict[str, torch.Tensor], stage: Stage) -> None:
        super().__init__()
        self.generator, self.stages, self.stage_index = gen, [stage], 0
        groups = gen.groups(stage.split)
        self.variables = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.detach().clone()) for k, v in state.items() if stage.is_free(k, groups[k])}
        )
        self._fixed = {k: v.detach().clone() for k, v in state.items() if k not in self.variables}
        self._moved: Optional[Tuple[Any, Any]] = None

    def current_state(self) -> Dict[str, torch.Tensor]:
        return {**self._fixed, **dict(self.variables.items())}

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if self._moved is None or self._moved[0] is not batch:  # once, as ILOModule does
            self._moved = (batch, batch.to(device))
        return self._moved[1]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        image = self.generator.render(self.current_state(), self.stages[0].split)
        return batch.operator.measurement_error(batch.operator.A(image), batch.observation).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(self.variables.values()), lr=self.stages[0].lr)


def time_bare_lightning(
    gen: SplitGenerator, stage: Stage, batch: int, warmup: int = 2, bench: Bench = CPU
) -> Dict[int, Dict[str, List[float]]]:
    """Like :func:`time_solve`, for :class:`BareLightning` (``ilo`` entries hold its step times)."""
    from torch.utils.data import DataLoader

    from ilo_pl.api import default_trainer_kwargs
    from ilo_pl.data import _RepeatSampler, _identity
    from ilo_pl.problem import ProblemBatch

    op, y = make_problem(gen, batch)
    state = gen.init_variables(batch, torch.Generator().manual_seed(0))
    state = gen.advance(state, 0, stage.split) if stage.split else state
    pb = ProblemBatch(ids=[str(i) for i in range(batch)], observation=y, operator=op,
                      seeds=list(range(batch)), target=None, indices=list(range(batch)))
    timer = StepTimer(bench=bench, warmup=warmup)
    kw = default_trainer_kwargs()
    kw.update(bench.trainer_kwargs(), callbacks=[timer])
    loader = DataLoader([pb], sampler=_RepeatSampler(1, stage.steps), batch_size=None, collate_fn=_identity)
    pl.Trainer(**kw).fit(BareLightning(gen, state, stage), train_dataloaders=loader)
    return _by_stage(timer, 0 if bench.timing == "block" else warmup)


def _med_ms(xs: Sequence[float]) -> float:
    return statistics.median(xs) * 1e3 if xs else float("nan")


def _mean_ms(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) * 1e3 if xs else float("nan")


def pool(dst: Dict[int, Dict[str, List[float]]], src: Dict[int, Dict[str, List[float]]]) -> None:
    """Add the step times of ``src`` (one timing) to ``dst`` (the rounds so far), stage by stage."""
    for stage, acc in src.items():
        d = dst.setdefault(stage, {k: [] for k in acc})
        for k, v in acc.items():
            d[k] += v


def summary(
    pooled: Dict[int, Dict[str, List[float]]], weights: Optional[Sequence[int]] = None, clock: str = "cpu"
) -> Dict[str, float]:
    """Medians per stage, combined across stages weighted by their step counts.

    ``ratio`` and ``ratio_mean`` use ``clock`` (``"cpu"``: process time, ``"wall"``).
    """
    stages = sorted(pooled)
    w = list(weights) if weights is not None else [1] * len(stages)
    tot = {k: sum(wi * _med_ms(pooled[s][k]) for wi, s in zip(w, stages)) / sum(w) for k in ("ilo", "ilo_cpu", "floor", "floor_cpu")}
    # Means count the periodic work a median hides (logging every ``log_every`` steps).
    mean = {k: sum(wi * _mean_ms(pooled[s][k]) for wi, s in zip(w, stages)) / sum(w)
            for k in ("ilo", "ilo_cpu", "floor", "floor_cpu")}
    sfx = "_cpu" if clock == "cpu" else ""
    return {
        "ilo_ms": round(tot["ilo"], 3),
        "floor_ms": round(tot["floor"], 3),
        "ilo_cpu_ms": round(tot["ilo_cpu"], 3),
        "floor_cpu_ms": round(tot["floor_cpu"], 3),
        "ratio_wall": round(tot["ilo"] / tot["floor"], 3),
        "ratio": round(tot["ilo" + sfx] / tot["floor" + sfx], 3),
        "ratio_mean": round(mean["ilo" + sfx] / mean["floor" + sfx], 3),
        "clock": clock,
        "steps": sum(len(pooled[s]["ilo"]) for s in stages),
    }


class LoopClock(pl.Callback):
    """Wall time from the first step's start to the end of training (synchronised)."""

    def __init__(self, bench: Bench) -> None:
        self.bench, self.start, self.end = bench, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.start is None:
            self.bench.sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.bench.sync()
        self.end = time.perf_counter()
