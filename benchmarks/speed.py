"""Benchmark: the cost of an ILO solve against the generator's own forward/backward (the floor).

Usage::

    python benchmarks/speed.py [--quick] [--out benchmarks/results/speed.csv]
                               [--sections overhead throughput projection memory solve]
                               [--repeats N] [--threads N] [--device cpu|cuda]
                               [--timing step|block]

Sections (all by default):

* ``overhead``   -- per-step time of an ILO solve run by Lightning
  (:func:`ilo_pl.api.solve`, so ``Trainer.fit`` with ``ILOModule`` and its
  callbacks) against a bare PyTorch loop doing only the same G2 forward, loss,
  backward and Adam step on the same batch (the *floor*), at every split layer
  of the 64x64 DCGAN (batch 1 and 16), of the tiny StyleGAN-2 fixture and at
  the resolution-block splits of a randomly initialised 256x256 StyleGAN-2
  (batch 1); plus the shipped DCGAN schedule (``configs/inpainting_box.yaml``:
  splits 0 to 4, steps scaled down).
  For the DCGAN the same step also runs in a bare ``LightningModule`` (no
  ILO code; :class:`BareLightning`) under the same trainer settings:
  ``ratio_bare`` is Lightning's own loop against the floor, ``ilo_vs_bare``
  (= ``ratio / ratio_bare``) what ilo-pl adds on top of Lightning.
* ``throughput`` -- per-image step time of the DCGAN at batch 1, 4, 16, 64.
* ``projection`` -- the exact l1 projection against the size of one sample
  (8k to 2M entries): the sort-based method (Duchi et al. 2008) and ilo-pl's,
  with the functions of ``benchmarks/projection.py``.
* ``memory``     -- peak memory of a solve and of the floor loop, each in a
  fresh subprocess (CPU: peak resident set size above the set-up, the
  high-water mark reset through ``/proc/self/clear_refs``; GPU:
  ``torch.cuda.max_memory_allocated``), and the buffers of the
  compressed-sensing operator at 3x1024x1024.
* ``solve``      -- wall-clock seconds of whole solves of a randomly
  initialised StyleGAN-2 (1024x1024 by default, ``--solve-size``) with the
  shipped paper schedule and losses (``configs/stylegan2/ffhq1024_inpainting_box.yaml``:
  800 steps; MSE + LPIPS-VGG + geodesic, the LPIPS backbone random because
  its ImageNet weights are not offline -- same cost), at ``32-true`` and
  ``16-mixed`` (CUDA) or ``bf16-mixed`` (CPU). Not in the default sections
  on the CPU (minutes per solve there); ``--solve-scale`` scales the steps.

Devices (``--device``, default ``cpu``): ``cuda`` runs every section on the
GPU (the trainer's ``accelerator``, the generator, the problem and the floor),
adds the 1024x1024 StyleGAN-2 to the overhead rows and the ``solve`` section
to the defaults. GPU work is asynchronous, so there a step cannot be timed
on its own without a synchronisation that would stall the pipeline ILO keeps
full; ``--timing block`` (the default on CUDA) therefore times each stage's
steady-state steps as one block between two synchronisations, and the floor
as a block of as many steps right after it. The ratio columns use wall time on
CUDA and CPU time on the CPU (column ``clock``).

How a step is timed (``--timing step``, the default on the CPU): a callback, first in the trainer's list, records the time
between its ``on_train_batch_start`` hooks of consecutive optimizer steps
inside ``Trainer.fit``: Lightning's loop, the other callbacks, the stage
checks, the projections, the learning-rate schedule, best-iterate tracking and
logging all fall inside. At each of those hooks the same callback runs and
times one floor step on its own copy of the stage's variables, so ILO and floor
steps alternate step by step and see the same machine load. The first steps of
each stage (set-up, allocator warm-up) are left out. Each configuration is run
``--repeats`` times (rounds interleaved across configurations) and the medians
pool all rounds. Both wall time and CPU time (``time.process_time``) are
recorded; on a shared machine the CPU time is the robust one (wall time also
counts the time other processes hold the core), so the ratio columns use it.

Threads: ``torch.set_num_threads(1)`` (``--threads``) for both ILO and the
floor: the benchmark machine is shared and one thread makes timings far less
noisy. Absolute times are therefore single-core times.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # running from a checkout without an install
    sys.path.insert(0, str(ROOT))

import pytorch_lightning as pl  # noqa: E402

from ilo_pl.api import solve  # noqa: E402
from ilo_pl.modules.generators.base import SplitGenerator  # noqa: E402
from ilo_pl.operators import CompressedSensing, RandomMask  # noqa: E402
from ilo_pl.operators.base import Operator  # noqa: E402
from ilo_pl.stages import Stage  # noqa: E402

FIXTURE = ROOT.parent / "shared" / "fixtures" / "stylegan2_rosinality_tiny.pt"

#: l1 radius of the DCGAN state in single-split measurements: small enough that
#: the projection is active on (nearly) every step, the expensive case.
DCGAN_STATE_RADIUS = 100.0
#: The config whose DCGAN stage schedule the "schedule" rows run (steps scaled).
SCHEDULE_CONFIG = ROOT / "configs" / "inpainting_box.yaml"
#: StyleGAN-2 radii per group (the paper's first-stage values; state: its second stage's).
SG2_RADII = {"latent": 300.0, "noise": 300.0, "state": 500.0}
#: The config whose StyleGAN-2 schedule and losses the ``solve`` section runs.
SG2_SOLVE_CONFIG = ROOT / "configs" / "stylegan2" / "ffhq1024_inpainting_box.yaml"


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


def dcgan_schedule(scale: float) -> Tuple[List[Stage], Dict[str, Any]]:
    """The shipped DCGAN schedule (``SCHEDULE_CONFIG``) with steps scaled by ``scale``, and its module options.

    The config is read by the command line's parser (``ilo_pl.config.build_from_config``):
    the options are every ``ILOModule`` argument as the config resolves it, bar the
    generator and the stages.
    """
    from ilo_pl.config import build_from_config

    built = build_from_config([SCHEDULE_CONFIG])
    stages = [dataclasses.replace(s, steps=max(4, int(s.steps * scale))) for s in built.module.stages]
    return stages, {k: v for k, v in built.module_kwargs.items() if k not in ("generator", "stages")}


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


def _pool(dst: Dict[int, Dict[str, List[float]]], src: Dict[int, Dict[str, List[float]]]) -> None:
    for stage, acc in src.items():
        d = dst.setdefault(stage, {k: [] for k in acc})
        for k, v in acc.items():
            d[k] += v


def _summary(
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


# ------------------------------------------------------------------------ sections
def overhead(quick: bool, repeats: int, bench: Bench = CPU) -> List[Dict[str, Any]]:
    """ILO step vs floor step per generator, split and batch, plus the DCGAN's default schedule."""
    gpu = bench.device == "cuda"
    configs: List[Tuple[str, List[int], int, int, int]] = [  # name, splits, batch, steps, warmup
        ("dcgan", [0, 1, 2, 3, 4], 1, 30 if quick else 60, 3),
        ("dcgan", [0, 1, 2, 3, 4], 16, 8 if quick else 20, 2),
        ("sg2-tiny", [0, 1, 2, 3, 4, 5, 6], 1, 20 if quick else 40, 3),
        # Seconds per step on one core: one round only (the fixed overhead is lost in the noise anyway).
        ("sg2-256", [0, 5, 11] if quick else [0, 1, 3, 5, 7, 9, 11], 1, (12 if gpu else 4) if quick else (30 if gpu else 7), 1 if not gpu else 3),
    ]
    if gpu:  # the paper's model size, at the paper's split layers (input, after the 4x4, 8x8, 16x16 blocks)
        configs.append(("sg2-1024", [0, 1, 3, 5], 1, 12 if quick else 30, 3))
    pooled: Dict[tuple, Dict[int, Dict[str, List[float]]]] = {}
    bare: Dict[tuple, Dict[int, Dict[str, List[float]]]] = {}
    gens: Dict[str, SplitGenerator] = {}
    sched, sched_kw = dcgan_schedule(0.1 if quick else 0.25)
    sched_name = "schedule " + "-".join(str(st.split) for st in sched)
    for r in range(repeats):
        for name, splits, batch, steps, warmup in configs:
            if name.startswith("sg2-") and name != "sg2-tiny" and r > 0:
                continue
            gen = gens.setdefault(name, make_generator(name).to(bench.device))
            for split in splits:
                stages, kw = stages_for(name, split, steps)
                _pool(pooled.setdefault((name, str(split), batch), {}), time_solve(gen, stages, batch, warmup, bench=bench, **kw))
                if name == "dcgan":  # Lightning's own share: the same step in a bare LightningModule
                    _pool(bare.setdefault((name, str(split), batch), {}),
                          time_bare_lightning(gen, stages[0], batch, warmup, bench=bench))
        for batch in (1, 16):
            _pool(pooled.setdefault(("dcgan", sched_name, batch), {}),
                  time_solve(gens["dcgan"], sched, batch, 2, bench=bench, **sched_kw))
        print(f"  overhead round {r + 1}/{repeats} done", flush=True)
    rows = []
    for (name, split, batch), acc in pooled.items():
        weights = [s.steps for s in sched] if split.startswith("schedule") else None
        row = dict(section="overhead", device=bench.device, model=name, split=split, batch=batch,
                   **_summary(acc, weights, bench.clock))
        if (name, split, batch) in bare:
            b = _summary(bare[(name, split, batch)], clock=bench.clock)
            # bare / its own interleaved floor; ILO's share = ILO ratio / bare ratio
            row.update(bare_ms=b["ilo_ms"], bare_cpu_ms=b["ilo_cpu_ms"], ratio_bare=b["ratio"], ilo_vs_bare=round(row["ratio"] / b["ratio"], 3))
        rows.append(row)
    return rows


def throughput(quick: bool, repeats: int, bench: Bench = CPU) -> List[Dict[str, Any]]:
    """Per-image step time of the DCGAN at several batch sizes (split 0, and split 2 with an active projection).

    Per-image times use ``bench.clock`` (CPU time on the CPU, wall time on a GPU).
    """
    gen = make_generator("dcgan").to(bench.device)
    batches = [1, 4, 16, 64]
    pooled: Dict[tuple, Dict[int, Dict[str, List[float]]]] = {}
    for _ in range(repeats):
        for split in (0, 2):
            for b in batches:
                steps = {1: 30, 4: 20, 16: 12, 64: 6}[b] // (2 if quick else 1) + 2
                stages, kw = stages_for("dcgan", split, steps)
                _pool(pooled.setdefault((split, b), {}), time_solve(gen, stages, b, 2, bench=bench, **kw))
    key = "_cpu_ms" if bench.clock == "cpu" else "_ms"
    rows = []
    for (split, b), acc in pooled.items():
        s = _summary(acc, clock=bench.clock)
        base = _summary(pooled[(split, 1)], clock=bench.clock)
        rows.append(dict(
            section="throughput", device=bench.device, model="dcgan", split=str(split), batch=b,
            ilo_cpu_ms=s["ilo_cpu_ms"], ilo_ms=s["ilo_ms"], floor_cpu_ms=s["floor_cpu_ms"], floor_ms=s["floor_ms"],
            per_image_ms=round(s["ilo" + key] / b, 3),
            floor_per_image_ms=round(s["floor" + key] / b, 3),
            per_image_vs_batch1=round((s["ilo" + key] / b) / base["ilo" + key], 3),
            ratio=s["ratio"], ratio_mean=s["ratio_mean"], clock=s["clock"], steps=s["steps"],
        ))
    return rows


def projection(quick: bool, repeats: int, bench: Bench = CPU) -> List[Dict[str, Any]]:
    """Sort-based vs ilo-pl l1 projection per sample size (benchmarks/projection.py), on ``bench.device``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import projection as pb  # noqa: PLC0415 - the sibling benchmark's functions

    devices = [torch.device(bench.device)]
    sizes = pb.QUICK_SIZES if quick else pb.SIZES
    print(pb.HEADER)
    rows = pb.run(sizes, max(3, repeats * (1 if quick else 3)), devices)
    # "ilo_ms" there is the projection's time: renamed so the CSV column is not the ILO step's.
    return [dict(section="projection", **{("ilo_proj_ms" if k == "ilo_ms" else k): v for k, v in r.items()}) for r in rows]


_MEMORY_CHILD = "--memory-child"


def _rss_kib() -> Dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak) of this process, KiB (Linux)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def _memory_child(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Runs in a fresh process: peak memory of one solve (or of the floor loop) above its set-up.

    CPU: the peak resident set size is reset after set-up (``/proc/self/clear_refs``)
    and its new high-water mark is compared with the resident size at that point.
    """
    import gc

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    gen = make_generator(spec["model"]).to(device)
    op, y = make_problem(gen, spec["batch"])
    op, y = op.to(device), y.to(device)
    stages, kw = stages_for(spec["model"], spec["split"], spec["steps"])
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak-RSS mark (Linux >= 4.0)
        fh.write("5")
    base = _rss_kib()["VmRSS"]
    if spec["kind"] == "ilo":
        solve(gen, op, y, stages, trainer_kwargs=Bench(device=device.type).trainer_kwargs(), **kw)
    else:
        stage = stages[0]
        state = gen.init_variables(spec["batch"])
        state = gen.advance(state, 0, stage.split) if stage.split else state
        groups = gen.groups(stage.split)
        free = {k for k in state if stage.is_free(k, groups[k])}
        step = FloorStep(gen, {k: v.to(device) for k, v in state.items()}, free, stage.split, op, y, stage.lr)
        for _ in range(stage.steps):
            step()
    out = {"peak_rss_delta_mib": round((_rss_kib()["VmHWM"] - base) / 1024, 1)}
    if device.type == "cuda":
        out["peak_gpu_mib"] = round((torch.cuda.max_memory_allocated() - base_gpu) / 2**20, 1)
    return out


def memory(quick: bool, threads: int, bench: Bench = CPU) -> List[Dict[str, Any]]:
    """Peak memory of ILO vs the floor loop (subprocesses), and the CS operator's buffers."""
    rows = []
    cases = [("dcgan", 0, 1, 20), ("dcgan", 2, 1, 20), ("dcgan", 2, 16, 10), ("sg2-tiny", 3, 1, 10), ("sg2-256", 5, 1, 3)]
    if quick:
        cases = cases[:3]
    elif bench.device == "cuda":
        cases.append(("sg2-1024", 5, 1, 3))
    for model, split, batch, steps in cases:
        res: Dict[str, Dict[str, Any]] = {}
        for kind in ("ilo", "floor"):
            spec = dict(model=model, split=split, batch=batch, steps=steps, kind=kind, threads=threads, device=bench.device)
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), _MEMORY_CHILD, json.dumps(spec)],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"memory measurement {spec} failed:\n{proc.stderr[-2000:]}")
            res[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        row = dict(section="memory", device=bench.device, model=model, split=str(split), batch=batch, steps=steps,
                   ilo_peak_mib=res["ilo"]["peak_rss_delta_mib"], floor_peak_mib=res["floor"]["peak_rss_delta_mib"])
        if "peak_gpu_mib" in res["ilo"]:
            row.update(ilo_gpu_mib=res["ilo"]["peak_gpu_mib"], floor_gpu_mib=res["floor"]["peak_gpu_mib"])
        rows.append(row)
        gpu = f"; GPU: ILO {row['ilo_gpu_mib']} MiB, floor {row['floor_gpu_mib']} MiB" if "ilo_gpu_mib" in row else ""
        print(f"  {model:>8} split {split} batch {batch:>2}: peak RSS above set-up: ILO {row['ilo_peak_mib']} MiB, "
              f"floor {row['floor_peak_mib']} MiB{gpu}", flush=True)
    op = CompressedSensing(ratio=0.1).build((3, 1024, 1024), 0)
    nbytes = sum(b.numel() * b.element_size() for b in op.buffers())
    n = 3 * 1024 * 1024
    rows.append(dict(section="memory", model=f"CompressedSensing(ratio=0.1) 3x1024x1024 ({type(op).__name__})",
                     operator_mib=round(nbytes / 2**20, 2), dense_matrix_gib=round(int(0.1 * n) * n * 4 / 2**30, 1)))
    print(f"  CS operator 3x1024x1024, m/n = 0.1: buffers {nbytes / 2**20:.2f} MiB "
          f"(a dense float32 matrix would take {int(0.1 * n) * n * 4 / 2**30:.0f} GiB)", flush=True)
    return rows


def _instantiate(spec: Dict[str, Any], **extra: Any) -> Any:
    """An object from a config entry ``{class_path, init_args}`` (``extra`` overrides init_args)."""
    import importlib

    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**spec.get("init_args", {}), **extra})


class _LoopClock(pl.Callback):
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


def solve_time(quick: bool, bench: Bench = CPU, size: int = 1024, scale: float = 1.0) -> List[Dict[str, Any]]:
    """Seconds per whole StyleGAN-2 solve (random weights) with the shipped paper schedule and losses.

    One untimed warm-up solve (4 steps per stage) first, so kernel builds,
    cuDNN's autotuning and the first allocations stay out of the numbers.
    """
    import yaml

    cfg = yaml.safe_load(SG2_SOLVE_CONFIG.read_text())
    model = cfg["model"]
    scale = min(scale, 0.02) if quick else scale
    stages = [Stage(**st) for st in model["stages"]]
    stages = [dataclasses.replace(st, steps=max(4, round(st.steps * scale))) for st in stages]
    from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    gen = StyleGAN2Generator(size=size, style_dim=512, n_mlp=8, mean_latent_samples=4096,
                             latent_space=model["generator"]["init_args"].get("latent_space", "w+")).to(bench.device)
    op_spec = dict(cfg["data"]["operator"])
    if size != 1024 and "box" in op_spec.get("init_args", {}):  # the box is given in 1024x1024 pixels
        op_spec["init_args"] = {**op_spec["init_args"], "box": [int(v * size / 1024) for v in op_spec["init_args"]["box"]]}
    op = _instantiate(op_spec).build(gen.image_shape, 0).to(bench.device)
    with torch.no_grad():
        target = gen.render(gen.init_variables(1, torch.Generator().manual_seed(1)), 0).float().clamp(-1, 1)
        y = op.A(target)
    # The LPIPS backbone's ImageNet weights are not offline: a random one costs the same.
    losses = {k: _instantiate(v, **({"pnet_rand": True} if k == "lpips" else {})) for k, v in model["losses"].items()}
    kw = dict(losses=losses, loss_weights=model.get("loss_weights"), sphere=model.get("sphere", False))
    precisions = ["32-true", "16-mixed"] if bench.device == "cuda" else ["32-true", "bf16-mixed"]
    warm = [dataclasses.replace(st, steps=4) for st in stages]
    rows = []
    for precision in precisions:
        tk = {**bench.trainer_kwargs(), "precision": precision}
        solve(gen, op, y, warm, trainer_kwargs=tk, **kw)
        clock = _LoopClock(bench)
        bench.sync()
        t0 = time.perf_counter()
        res = solve(gen, op, y, stages, trainer_kwargs=tk, callbacks=[clock], **kw)
        bench.sync()
        total = time.perf_counter() - t0
        steps = sum(st.steps for st in stages)
        psnr = -10 * torch.log10(((res.images.to(target.device).float() - target) ** 2).mean() / 4).item()
        failed = [f for f in res.failed if f is not None]
        rows.append(dict(
            section="solve", device=bench.device, model=f"sg2-{size} (random weights)", precision=precision,
            steps=steps, schedule="-".join(str(st.split) for st in stages),
            total_s=round(total, 2), loop_s=round(clock.end - clock.start, 2),
            ms_per_step=round((clock.end - clock.start) / steps * 1e3, 2), psnr_db=round(psnr, 2),
            loss=float(res.measurement_loss[0]), failed=len(failed),
        ))
        print(f"  sg2-{size} {precision}: {steps} steps, {total:.1f} s per solve ({rows[-1]['ms_per_step']} ms/step), "
              f"measurement loss {rows[-1]['loss']:.4g}" + (f", FAILED: {failed[0]}" if failed else ""), flush=True)
    return rows


# ------------------------------------------------------------------------ output
def _table(rows: List[Dict[str, Any]], cols: Sequence[str]) -> str:
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


TABLE_COLUMNS = {
    "overhead": ["device", "model", "split", "batch", "ilo_cpu_ms", "floor_cpu_ms", "ratio", "ratio_mean", "ratio_bare", "ilo_vs_bare", "ilo_ms", "floor_ms", "bare_ms", "ratio_wall", "clock", "steps"],
    "throughput": ["device", "model", "split", "batch", "ilo_cpu_ms", "ilo_ms", "per_image_ms", "per_image_vs_batch1", "floor_per_image_ms", "ratio", "ratio_mean", "clock"],
    "projection": ["device", "size", "batch", "radius_frac", "sort_ms", "ilo_proj_ms", "speedup", "inplace_warm_ms", "speedup_warm", "native_warm_ms", "kernel_vs_native", "no_reads_warm_ms", "max_rel_err"],
    "solve": ["device", "model", "precision", "schedule", "steps", "total_s", "loop_s", "ms_per_step", "psnr_db", "loss", "failed"],
    "memory": ["model", "split", "batch", "ilo_peak_mib", "floor_peak_mib", "ilo_gpu_mib", "floor_gpu_mib", "operator_mib", "dense_matrix_gib"],
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == _MEMORY_CHILD:
        print(json.dumps(_memory_child(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, splits and repeats (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.csv", help="CSV to write")
    parser.add_argument("--sections", nargs="+", choices=list(TABLE_COLUMNS), default=None,
                        help="default: all but 'solve' on the CPU, all on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per measurement (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for ILO and the floor (default 1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where everything runs (default cpu)")
    parser.add_argument("--timing", choices=["step", "block"], default=None,
                        help="step: each step timed, floor interleaved (CPU default); block: each stage's steps "
                             "timed between two synchronisations (CUDA default)")
    parser.add_argument("--solve-size", type=int, default=1024, help="StyleGAN-2 resolution of the 'solve' section")
    parser.add_argument("--solve-scale", type=float, default=1.0, help="scale of the 'solve' section's steps")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to PyTorch (run on a GPU machine, or drop --device)")
    if args.solve_scale <= 0:
        parser.error("--solve-scale must be > 0")
    bench = Bench(device=args.device, timing=args.timing or ("block" if args.device == "cuda" else "step"))
    sections = args.sections or [k for k in TABLE_COLUMNS if k != "solve" or args.device == "cuda"]
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*")  # Lightning's advice does not apply here
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"torch {torch.__version__}, pytorch-lightning {pl.__version__}, {torch.get_num_threads()} thread(s), "
          f"device {bench.device} ({gpu}), {bench.timing} timing, {repeats} round(s){' (quick)' if args.quick else ''}",
          flush=True)
    rows: List[Dict[str, Any]] = []
    tables = []
    for section in sections:
        print(f"== {section}", flush=True)
        t0 = time.perf_counter()
        if section == "overhead":
            got = overhead(args.quick, repeats, bench)
        elif section == "throughput":
            got = throughput(args.quick, repeats, bench)
        elif section == "projection":
            got = projection(args.quick, repeats, bench)
        elif section == "solve":
            got = solve_time(args.quick, bench, args.solve_size, args.solve_scale)
        else:
            got = memory(args.quick, args.threads, bench)
        rows += got
        tables.append(f"### {section}\n\n" + _table(got, TABLE_COLUMNS[section]))
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n" + "\n\n".join(tables))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields: List[str] = ["section"]
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
