"""Benchmark: the cost of an ILO solve against the generator's own forward/backward (the floor).

Usage (from the repository root)::

    python -m benchmarks.speed [--quick] [--out benchmarks/results/speed.csv]
                               [--sections overhead throughput projection memory solve batching]
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
  with the functions of :mod:`benchmarks.projection`.
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
* ``batching``   -- per-image ILO step time and peak memory per image against
  the batch size (1, 2, 4, 8, 16) for the DCGAN, the tiny StyleGAN-2 fixture
  and a randomly initialised 256x256 StyleGAN-2 (batch 16 left out there: it
  needs 10-12 GB), with StyleGAN-2's modulated convolutions fused and unfused
  (``modconv_impl``) and, on the CPU, under three heap allocators
  (:data:`MALLOCS`). Each configuration runs in a fresh process
  (:func:`batching_in_fresh_process`), rounds interleaved across configurations.
  Not in the default sections on the CPU (~50 min on one core; ``--quick`` ~10 min).

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

The generators, problems, floor step and timers are :mod:`benchmarks.timing`'s.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run by path: as ``python -m benchmarks.speed`` (see _script.py)
    import _script

    _script.run_as_module(__file__)

import argparse
import csv
import dataclasses
import json
import logging
import math
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import yaml

from benchmarks import projection as l1_projection
from benchmarks.common import RESULTS, ROOT
from benchmarks.timing import (
    CPU,
    Bench,
    FloorStep,
    LoopClock,
    make_generator,
    make_problem,
    pool,
    stages_for,
    summary,
    time_bare_lightning,
    time_solve,
)
from ilo_pl.api import solve
from ilo_pl.config import build_from_config
from ilo_pl.modules.generators.base import SplitGenerator
from ilo_pl.operators import CompressedSensing
from ilo_pl.stages import Stage

#: The config whose DCGAN stage schedule the "schedule" rows run (steps scaled).
SCHEDULE_CONFIG = ROOT / "configs" / "inpainting_box.yaml"
#: The config whose StyleGAN-2 schedule and losses the ``solve`` section runs.
SG2_SOLVE_CONFIG = ROOT / "configs" / "stylegan2" / "ffhq1024_inpainting_box.yaml"


def dcgan_schedule(scale: float) -> Tuple[List[Stage], Dict[str, Any]]:
    """The shipped DCGAN schedule (``SCHEDULE_CONFIG``) with steps scaled by ``scale``, and its module options.

    The config is read by the command line's parser (``ilo_pl.config.build_from_config``):
    the options are every ``ILOModule`` argument as the config resolves it, bar the
    generator and the stages.
    """
    built = build_from_config([SCHEDULE_CONFIG])
    stages = [dataclasses.replace(s, steps=max(4, int(s.steps * scale))) for s in built.module.stages]
    return stages, {k: v for k, v in built.module_kwargs.items() if k not in ("generator", "stages")}


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
                pool(pooled.setdefault((name, str(split), batch), {}), time_solve(gen, stages, batch, warmup, bench=bench, **kw))
                if name == "dcgan":  # Lightning's own share: the same step in a bare LightningModule
                    pool(bare.setdefault((name, str(split), batch), {}),
                          time_bare_lightning(gen, stages[0], batch, warmup, bench=bench))
        for batch in (1, 16):
            pool(pooled.setdefault(("dcgan", sched_name, batch), {}),
                  time_solve(gens["dcgan"], sched, batch, 2, bench=bench, **sched_kw))
        print(f"  overhead round {r + 1}/{repeats} done", flush=True)
    rows = []
    for (name, split, batch), acc in pooled.items():
        weights = [s.steps for s in sched] if split.startswith("schedule") else None
        row = dict(section="overhead", device=bench.device, model=name, split=split, batch=batch,
                   **summary(acc, weights, bench.clock))
        if (name, split, batch) in bare:
            b = summary(bare[(name, split, batch)], clock=bench.clock)
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
                pool(pooled.setdefault((split, b), {}), time_solve(gen, stages, b, 2, bench=bench, **kw))
    key = "_cpu_ms" if bench.clock == "cpu" else "_ms"
    rows = []
    for (split, b), acc in pooled.items():
        s = summary(acc, clock=bench.clock)
        base = summary(pooled[(split, 1)], clock=bench.clock)
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
    """Sort-based vs ilo-pl l1 projection per sample size (:mod:`benchmarks.projection`), on ``bench.device``."""
    devices = [torch.device(bench.device)]
    sizes = l1_projection.QUICK_SIZES if quick else l1_projection.SIZES
    print(l1_projection.HEADER)
    rows = l1_projection.run(sizes, max(3, repeats * (1 if quick else 3)), devices)
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


class PeakMemory:
    """Peak memory of what runs after :meth:`start`, above the memory in use at that point.

    CPU: the process's peak resident set size is reset (``/proc/self/clear_refs``,
    Linux >= 4.0) and its new high-water mark ``VmHWM`` is compared with ``VmRSS``
    at the start. CUDA: ``torch.cuda.max_memory_allocated`` above the memory
    allocated at the start. One place for the memory and batching children.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.base = 0
        self.base_gpu = 0

    def start(self) -> "PeakMemory":
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_gpu = torch.cuda.memory_allocated()
        with open("/proc/self/clear_refs", "w") as fh:  # reset the peak-RSS mark
            fh.write("5")
        self.base = _rss_kib()["VmRSS"]
        return self

    def read(self) -> Dict[str, float]:
        """``peak_rss_delta_mib`` (and ``peak_gpu_mib`` on a GPU) since :meth:`start`."""
        out = {"peak_rss_delta_mib": round((_rss_kib()["VmHWM"] - self.base) / 1024, 1)}
        if self.device.type == "cuda":
            out["peak_gpu_mib"] = round((torch.cuda.max_memory_allocated() - self.base_gpu) / 2**20, 1)
        return out


def _memory_child(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Runs in a fresh process: peak memory of one solve (or of the floor loop) above its set-up.

    CPU: the peak resident set size is reset after set-up (``/proc/self/clear_refs``)
    and its new high-water mark is compared with the resident size at that point.
    """

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    gen = make_generator(spec["model"]).to(device)
    op, y = make_problem(gen, spec["batch"])
    op, y = op.to(device), y.to(device)
    stages, kw = stages_for(spec["model"], spec["split"], spec["steps"])
    peak = PeakMemory(device).start()
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
    return peak.read()


def memory_in_fresh_process(spec: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`_memory_child` of ``spec``, run in a new ``python -m benchmarks.speed`` process.

    Raises:
        RuntimeError: with the end of the child's stderr, if it fails.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", _MEMORY_CHILD, json.dumps(spec)],
        capture_output=True, text=True, check=False, cwd=ROOT,  # -m finds the package from the repository root
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
            res[kind] = memory_in_fresh_process(spec)
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


# ------------------------------------------------------------------------ batching
#: Batch sizes of the ``batching`` section per model (256x256 StyleGAN-2: batch 16 would need 10-12 GB).
BATCHING_BATCHES: Dict[str, Tuple[int, ...]] = {
    "dcgan": (1, 2, 4, 8, 16), "sg2-tiny": (1, 2, 4, 8, 16), "sg2-256": (1, 2, 4, 8),
}
#: ``--quick``'s batch sizes.
BATCHING_QUICK_BATCHES: Dict[str, Tuple[int, ...]] = {"dcgan": (1, 4, 16), "sg2-tiny": (1, 4, 16), "sg2-256": (1, 8)}
#: Timed steps per configuration of the ``batching`` section (the set-up step and ``warmup`` more run untimed).
BATCHING_STEPS: Dict[str, Dict[int, int]] = {
    "dcgan": {1: 30, 2: 24, 4: 16, 8: 12, 16: 8},
    "sg2-tiny": {1: 30, 2: 24, 4: 16, 8: 12, 16: 8},
    "sg2-256": {1: 2, 2: 2, 4: 2, 8: 2},
}
#: Heap allocators of the ``batching`` section (CPU), as environment settings of its child processes.
#: ``glibc``: glibc as the system leaves it (``ILO_PL_MALLOC=system``). glibc serves every block above its
#: mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it when freed, so each such tensor is
#: page-faulted and zeroed by the kernel again on every step (system time). ``keep``: what ``ilo-pl fit``
#: does by default, :func:`ilo_pl.malloc.keep_freed_memory` (glibc with ``mmap`` off and no trimming, set
#: in-process), so freed memory is reused. ``jemalloc``: jemalloc preloaded, freed pages kept
#: (``dirty_decay_ms:-1``); left out when ``libjemalloc.so.2`` is not installed.
MALLOCS: Dict[str, Dict[str, str]] = {
    "glibc": {"ILO_PL_MALLOC": "system"},
    "keep": {"ILO_PL_MALLOC": "keep"},
    "jemalloc": {"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"},
}
#: The allocator ``per_image_vs_default_batch1`` compares with: ilo-pl's default.
DEFAULT_MALLOC = "keep"
_BATCHING_CHILD = "--batching-child"


def find_jemalloc() -> Optional[str]:
    """The path of ``libjemalloc.so.2`` if the dynamic loader finds it, else ``None``."""
    import ctypes.util

    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib", "/usr/lib/aarch64-linux-gnu"):
        if Path(folder, "libjemalloc.so.2").is_file():
            return str(Path(folder, "libjemalloc.so.2"))
    name = ctypes.util.find_library("jemalloc")
    return name if name else None


def batching_variants(model: str, device: str, quick: bool) -> List[Tuple[Optional[str], str]]:
    """The ``(modconv_impl, malloc)`` pairs the ``batching`` section runs for ``model``.

    StyleGAN-2: fused and unfused modulated convolutions under ilo-pl's default allocator
    settings (``keep``); at 256x256 also the unfused form under the system's glibc and jemalloc.
    DCGAN: each allocator. On a GPU only the default (device memory has its own caching
    allocator). ``quick``: the DCGAN under the default only; at 256x256 the unfused form only,
    under the default and the system's glibc.
    """
    mallocs = [DEFAULT_MALLOC] if device != "cpu" else [DEFAULT_MALLOC, "glibc"] + (["jemalloc"] if find_jemalloc() else [])
    if model == "dcgan":
        return [(None, m) for m in (mallocs[:1] if quick else mallocs)]
    if model == "sg2-tiny":
        return [("unfused", DEFAULT_MALLOC), ("fused", DEFAULT_MALLOC)]
    if quick:
        return [("unfused", m) for m in mallocs[:2]]
    return [("unfused", DEFAULT_MALLOC), ("fused", DEFAULT_MALLOC)] + [("unfused", m) for m in mallocs[1:]]


def step_flops(gen: Any, batch: int) -> float:
    """Floating-point operations of one ``G`` forward and backward (every input free) at ``batch``.

    Counted by ``torch.utils.flop_counter`` (convolutions and matrix products; the elementwise
    work is not counted), so ``flops / step time`` is a lower bound of the arithmetic rate.
    """
    from torch.utils.flop_counter import FlopCounterMode

    gen.freeze()  # as in a solve: no weight gradients
    device = next(gen.parameters()).device
    state = {k: v.detach().to(device).requires_grad_(True)
             for k, v in gen.init_variables(batch, torch.Generator().manual_seed(0)).items()}
    with FlopCounterMode(display=False) as counter:
        gen.render(state, 0).square().sum().backward()
    return float(counter.get_total_flops())


def conv_peak_flops(seconds: float = 2.0) -> float:
    """This CPU's rate (flop/s, process time) on one large 3x3 convolution (128 channels, 128x128), forward.

    The reference for :func:`step_flops`: the dense arithmetic the generators' big layers do,
    measured in the same process, so load and clock apply to both.
    """
    x, w = torch.randn(1, 128, 128, 128), torch.randn(128, 128, 3, 3)
    torch.nn.functional.conv2d(x, w, padding=1)
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        torch.nn.functional.conv2d(x, w, padding=1)
        n += 1
    return n * 2 * 128 * 128 * 9 * 128 * 128 / (time.process_time() - t0)


def _batching_child(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Runs in a fresh process: the step times and peak memory of one ILO solve at one batch size.

    One stage at split 0 freeing every entry (:func:`~benchmarks.timing.stages_for`); the
    set-up step and ``warmup`` steps are not timed. Memory: the peak resident set size above
    the set-up (generator built, problem drawn), its high-water mark reset through
    ``/proc/self/clear_refs``; on a GPU also ``torch.cuda.max_memory_allocated`` above set-up.
    """

    from benchmarks.timing import StepTimer, _by_stage

    from ilo_pl.malloc import keep_freed_memory

    keep_freed_memory()  # as ilo-pl fit does; a no-op under ILO_PL_MALLOC=system or a preloaded allocator
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec["threads"])
    bench = Bench(device=spec.get("device", "cpu"), timing=spec.get("timing", "step"))
    gen = make_generator(spec["model"])
    if spec.get("modconv"):
        gen.modconv_impl = spec["modconv"]
    gen = gen.to(bench.device)

    batch, warmup = spec["batch"], spec["warmup"]
    op, y = make_problem(gen, batch)
    stages, kw = stages_for(spec["model"], 0, spec["steps"] + warmup + 2)
    peak = PeakMemory(torch.device(bench.device)).start()
    timer = StepTimer(with_floor=False, bench=bench, warmup=warmup)
    solve(gen, op, y, stages, callbacks=[timer], trainer_kwargs=bench.trainer_kwargs(), **kw)
    acc = _by_stage(timer, 0 if bench.timing == "block" else warmup)[0]
    out = {"ilo": acc["ilo"], "ilo_cpu": acc["ilo_cpu"], **peak.read()}
    if spec.get("roofline") and bench.device == "cpu":  # after the peak is read: freed memory may be kept
        out.update(gflop_per_image=step_flops(gen, 1) / 1e9, conv_peak_gflops=conv_peak_flops() / 1e9)
    return out


def batching_in_fresh_process(spec: Dict[str, Any], malloc: str = "glibc") -> Dict[str, Any]:
    """:func:`_batching_child` of ``spec`` in a new ``python -m benchmarks.speed`` process under ``malloc``.

    Raises:
        RuntimeError: with the end of the child's stderr, if it fails.
    """
    import os

    env = dict(os.environ, **MALLOCS[malloc])
    if malloc == "jemalloc":
        env["LD_PRELOAD"] = find_jemalloc() or MALLOCS[malloc]["LD_PRELOAD"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", _BATCHING_CHILD, json.dumps(spec)],
        capture_output=True, text=True, check=False, cwd=ROOT, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"batching measurement {spec} ({malloc}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def batching(
    quick: bool, repeats: int, threads: int, bench: Bench = CPU,
    batches: Optional[Dict[str, Sequence[int]]] = None, steps_scale: float = 1.0,
) -> List[Dict[str, Any]]:
    """Per-image ILO step time and peak memory per image against the batch size, per model and variant.

    Every configuration (model, ``modconv_impl``, allocator, batch) runs in a fresh process
    (:func:`batching_in_fresh_process`): the allocator is chosen before the process starts, and
    each peak is the configuration's own. ``repeats`` rounds (one for the 256x256 StyleGAN-2,
    whose steps take seconds per image), interleaved across configurations; medians pool the
    rounds. ``per_image_vs_batch1`` is relative to the same model and variant at batch 1,
    ``vs_default_batch1`` to the model's default (StyleGAN-2 unfused, as ``modconv_impl="auto"``
    runs every ILO step that frees the latent; ilo-pl's allocator settings, :data:`DEFAULT_MALLOC`)
    at batch 1. Roofline (CPU, batch-1 children of the StyleGAN-2 256x256 and the DCGAN):
    ``gflop_per_image`` of one ``G`` forward and backward (:func:`step_flops`), ``gflops`` the
    rate that implies at each batch size, and ``conv_peak_gflops`` the same process's rate on one
    large convolution (:func:`conv_peak_flops`): how far batching can lower the per-image cost.

    Args:
        quick: fewer steps and batch sizes, one round.
        repeats: rounds.
        threads: torch threads of each child.
        bench: device and timing mode.
        batches: batch sizes per model (default :data:`BATCHING_BATCHES`; ``quick``:
            :data:`BATCHING_QUICK_BATCHES`).
        steps_scale: scales the timed steps (:data:`BATCHING_STEPS`, at least 2).
    """
    if batches is None:
        batches = BATCHING_QUICK_BATCHES if quick else BATCHING_BATCHES
    scale = steps_scale * (0.5 if quick else 1.0)
    configs = [(model, impl, malloc, b) for model, bs in batches.items()
               for impl, malloc in batching_variants(model, bench.device, quick) for b in bs]
    pooled: Dict[tuple, Dict[str, List[float]]] = {}
    roofline: Dict[tuple, Tuple[float, float]] = {}
    for r in range(1 if quick else repeats):
        for model, impl, malloc, b in configs:
            if r > 0 and model.startswith("sg2-") and model != "sg2-tiny":
                continue
            steps = max(2, round(BATCHING_STEPS.get(model, BATCHING_STEPS["sg2-256"]).get(b, 2) * scale))
            spec = dict(model=model, modconv=impl, batch=b, steps=steps, warmup=0 if model == "sg2-256" else 2,
                        threads=threads, device=bench.device, timing=bench.timing,
                        roofline=r == 0 and b == 1 and model in ("sg2-256", "dcgan"))
            got = batching_in_fresh_process(spec, malloc)
            acc = pooled.setdefault((model, impl, malloc, b), {"ilo": [], "ilo_cpu": [], "peak": [], "gpu": []})
            acc["ilo"] += got["ilo"]
            acc["ilo_cpu"] += got["ilo_cpu"]
            acc["peak"].append(got["peak_rss_delta_mib"])
            if "gflop_per_image" in got:
                roofline[(model, impl, malloc)] = (got["gflop_per_image"], got["conv_peak_gflops"])
            if "peak_gpu_mib" in got:
                acc["gpu"].append(got["peak_gpu_mib"])
            print(f"  {model:>8} {impl or '-':>7} {malloc:>10} batch {b:>2}: "
                  f"{statistics.median(got['ilo_cpu' if bench.clock == 'cpu' else 'ilo']) * 1e3 / b:9.1f} ms/image, "
                  f"peak {got['peak_rss_delta_mib'] / b:7.1f} MiB/image", flush=True)
        print(f"  batching round {r + 1} done", flush=True)
    key = "ilo_cpu" if bench.clock == "cpu" else "ilo"
    per_image = {k: statistics.median(acc[key]) * 1e3 / k[3] for k, acc in pooled.items()}
    rows = []
    for (model, impl, malloc, b), acc in pooled.items():
        base = per_image.get((model, impl, malloc, 1))
        default = per_image.get((model, "unfused" if impl else None, DEFAULT_MALLOC, 1))
        row = dict(
            section="batching", device=bench.device, model=model, modconv=impl or "", malloc=malloc, batch=b,
            step_cpu_ms=round(statistics.median(acc["ilo_cpu"]) * 1e3, 3), step_ms=round(statistics.median(acc["ilo"]) * 1e3, 3),
            per_image_ms=round(per_image[(model, impl, malloc, b)], 3),
            per_image_vs_batch1=round(per_image[(model, impl, malloc, b)] / base, 3) if base else "",
            vs_default_batch1=round(per_image[(model, impl, malloc, b)] / default, 3) if default else "",
            peak_mib=max(acc["peak"]), peak_per_image_mib=round(max(acc["peak"]) / b, 1),
            clock=bench.clock, steps=len(acc["ilo"]),
        )
        if (model, impl, malloc) in roofline:
            gflop, peak = roofline[(model, impl, malloc)]
            row.update(gflop_per_image=round(gflop, 2), gflops=round(gflop / (per_image[(model, impl, malloc, b)] / 1e3), 1),
                       conv_peak_gflops=round(peak, 1))
        if acc["gpu"]:
            row.update(peak_gpu_mib=max(acc["gpu"]), peak_gpu_per_image_mib=round(max(acc["gpu"]) / b, 1))
        rows.append(row)
    return rows


def _instantiate(spec: Dict[str, Any], **extra: Any) -> Any:
    """An object from a resolved config entry ``{class_path, init_args}`` (``extra`` overrides init_args)."""
    import importlib

    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**spec.get("init_args", {}), **extra})


def solve_overrides(size: int) -> List[str]:
    """What the ``solve`` section changes in :data:`SG2_SOLVE_CONFIG`, as ``ilo-pl fit`` arguments.

    A randomly initialised config-f generator of side ``size`` (no checkpoint) and a
    random LPIPS backbone (its ImageNet weights are not offline; a random one costs
    the same), both drawn after ``--seed_everything 0``, so every run times the same
    weights. Below 1024 the config's stages keep only the noises such a generator
    has (``free`` names entries that exist).
    """
    g = "--model.generator.init_args."
    out = ["--seed_everything", "0", g + "checkpoint", "null", g + "size", str(size), g + "style_dim", "512",
           g + "n_mlp", "8", g + "mean_latent_samples", "4096", "--model.losses.lpips.init_args.pnet_rand", "true"]
    if size != 1024:
        noises = 2 * int(round(math.log2(size))) - 3  # one noise at 4x4, two per later resolution

        def exists(key: str) -> bool:
            m = re.fullmatch(r"noise_(\d+)", key)
            return m is None or int(m.group(1)) < noises

        stages = yaml.safe_load(SG2_SOLVE_CONFIG.read_text())["model"]["stages"]
        stages = [dict(st, free=[k for k in st["free"] if exists(k)]) if "free" in st else st for st in stages]
        out += ["--model.stages", json.dumps(stages)]
    return out


def solve_time(quick: bool, bench: Bench = CPU, size: int = 1024, scale: float = 1.0) -> List[Dict[str, Any]]:
    """Seconds per whole StyleGAN-2 solve (random weights) with the shipped paper schedule and losses.

    The config (:data:`SG2_SOLVE_CONFIG`) is read by the command line's parser
    (``ilo_pl.config.build_from_config``, with :func:`solve_overrides`): its
    stages, every module option (losses, weights, ``sphere``, ...), its operator
    (a box is scaled from 1024x1024 pixels to ``size``) and trainer settings.
    One untimed warm-up solve (4 steps per stage) first, so kernel builds,
    cuDNN's autotuning and the first allocations stay out of the numbers.
    """
    built = build_from_config([SG2_SOLVE_CONFIG], solve_overrides(size))
    scale = min(scale, 0.02) if quick else scale
    stages = [dataclasses.replace(st, steps=max(4, round(st.steps * scale))) for st in built.module.stages]
    gen = built.module.generator.to(bench.device)
    spec = built.datamodule_kwargs["operator"]
    op_cfg = built.config["data"]["operator"]
    box = (op_cfg.get("init_args") or {}).get("box")
    if size != 1024 and box is not None:  # the box is given in 1024x1024 pixels
        spec = _instantiate(op_cfg, box=[int(v * size / 1024) for v in box])
    op = spec.build(gen.image_shape, 0).to(bench.device)
    with torch.no_grad():
        target = gen.render(gen.init_variables(1, torch.Generator().manual_seed(1)), 0).float().clamp(-1, 1)
        y = op.A(target)
    kw = {k: v for k, v in built.module_kwargs.items() if k not in ("generator", "stages")}
    precisions = ["32-true", "16-mixed"] if bench.device == "cuda" else ["32-true", "bf16-mixed"]
    warm = [dataclasses.replace(st, steps=4) for st in stages]
    rows = []
    for precision in precisions:
        tk = {**built.trainer_kwargs, **bench.trainer_kwargs(), "precision": precision}
        solve(gen, op, y, warm, trainer_kwargs=tk, **kw)
        clock = LoopClock(bench)
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
    "batching": ["device", "model", "modconv", "malloc", "batch", "step_cpu_ms", "step_ms", "per_image_ms", "per_image_vs_batch1", "vs_default_batch1", "peak_mib", "peak_per_image_mib", "peak_gpu_per_image_mib", "gflops", "conv_peak_gflops", "clock", "steps"],
}
#: Sections left out of the default run on the CPU (minutes per configuration there).
CPU_OPT_IN = ("solve", "batching")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == _MEMORY_CHILD:
        print(json.dumps(_memory_child(json.loads(argv[1]))))
        return 0
    if argv and argv[0] == _BATCHING_CHILD:
        print(json.dumps(_batching_child(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, splits and repeats (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "speed.csv", help="CSV to write")
    parser.add_argument("--sections", nargs="+", choices=list(TABLE_COLUMNS), default=None,
                        help="default: all but 'solve' and 'batching' on the CPU, all on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per measurement (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for ILO and the floor (default 1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where everything runs (default cpu)")
    parser.add_argument("--timing", choices=["step", "block"], default=None,
                        help="step: each step timed, floor interleaved (CPU default); block: each stage's steps "
                             "timed between two synchronisations (CUDA default)")
    parser.add_argument("--solve-size", type=int, default=1024, help="StyleGAN-2 resolution of the 'solve' section")
    parser.add_argument("--solve-scale", type=float, default=1.0, help="scale of the 'solve' section's steps")
    parser.add_argument("--batching-models", nargs="+", choices=list(BATCHING_BATCHES), default=None,
                        help="models of the 'batching' section (default: all)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to PyTorch (run on a GPU machine, or drop --device)")
    if args.solve_scale <= 0:
        parser.error("--solve-scale must be > 0")
    bench = Bench(device=args.device, timing=args.timing or ("block" if args.device == "cuda" else "step"))
    sections = args.sections or [k for k in TABLE_COLUMNS if k not in CPU_OPT_IN or args.device == "cuda"]
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
        elif section == "batching":
            table = BATCHING_QUICK_BATCHES if args.quick else BATCHING_BATCHES
            got = batching(args.quick, repeats, args.threads, bench,
                           batches={m: table[m] for m in (args.batching_models or table)})
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
