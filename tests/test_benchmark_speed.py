"""Smoke tests of the speed benchmark's parts (``benchmarks/speed.py``); no timing is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _speed():
    bench = str(ROOT / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    if "speed" not in sys.modules:
        spec = importlib.util.spec_from_file_location("speed", ROOT / "benchmarks" / "speed.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["speed"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["speed"]


def _script(name: str):
    """A benchmark script of benchmarks/ loaded as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_schedule_rows_run_the_shipped_config():
    speed = _speed()
    stages, kw = speed.dcgan_schedule(0.1)
    model = yaml.safe_load(speed.SCHEDULE_CONFIG.read_text())["model"]
    assert [s.split for s in stages] == [s["split"] for s in model["stages"]]
    assert [s.steps for s in stages] == [max(4, int(s["steps"] * 0.1)) for s in model["stages"]]
    assert [s.radius for s in stages] == [s.get("radius", {}) for s in model["stages"]]
    # Every module option of the config reaches the timed solves (read by the CLI's parser).
    for key, value in model.items():
        if key not in ("generator", "stages"):
            assert kw[key] == value, key
    assert "generator" not in kw and "stages" not in kw and kw["selection"] in ("best", "last")


def test_bare_lightning_and_ilo_steps_are_timed_with_interleaved_floor_steps():
    speed = _speed()
    torch.manual_seed(0)
    gen = speed.make_generator("dcgan")
    stages, kw = speed.stages_for("dcgan", 3, 6)
    bare = speed.time_bare_lightning(gen, stages[0], batch=2, warmup=1)
    ilo = speed.time_solve(gen, stages, 2, warmup=1, **kw)
    # 6 steps give 5 intervals between consecutive step starts; one is dropped as warm-up,
    # and for ILO also the stage's set-up step (timed before the stage transition).
    for got, kept in ((bare, 4), (ilo, 3)):
        acc = got[0]
        assert len(acc["ilo"]) == len(acc["ilo_cpu"]) == kept
        assert len(acc["floor"]) >= kept
        assert all(t > 0 for t in acc["ilo"] + acc["floor"])
    row = speed._summary(bare)
    assert row["steps"] == 4 and row["ratio"] > 0


def test_floor_placement_script_runs(capsys):
    _speed()
    mod = _script("floor_placement")
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--split", "4", "--batch", "1", "--loops", "2", "--steps", "3"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script pins one thread
    out = capsys.readouterr().out
    assert out.count("ms/step") == 2 and "max/min" in out


def test_block_timing_keeps_one_entry_per_timed_step_and_a_floor_block():
    speed = _speed()
    torch.manual_seed(0)
    gen = speed.make_generator("dcgan")
    stages, kw = speed.stages_for("dcgan", 2, 7)
    bench = speed.Bench(timing="block")
    got = speed.time_solve(gen, stages, 2, warmup=2, bench=bench, **kw)
    acc = got[0]
    # steps 2..5 of 7 are timed as one block (index 2 up to the start of the last step): 4 entries
    assert len(acc["ilo"]) == len(acc["floor"]) == 4
    assert len(set(acc["ilo"])) == 1 and acc["ilo"][0] > 0 and acc["floor"][0] > 0
    bare = speed.time_bare_lightning(gen, stages[0], batch=2, warmup=2, bench=bench)
    assert len(bare[0]["ilo"]) == 4
    row = speed._summary(got, clock="wall")
    assert row["clock"] == "wall" and row["steps"] == 4 and row["ratio"] == row["ratio_wall"]


def test_block_timing_rejects_too_short_stages():
    speed = _speed()
    gen = speed.make_generator("dcgan")
    stages, kw = speed.stages_for("dcgan", 1, 3)
    import pytest

    with pytest.raises(ValueError, match="at least warmup"):
        speed.time_solve(gen, stages, 1, warmup=2, bench=speed.Bench(timing="block"), **kw)


def test_solve_section_runs_the_shipped_schedule(tmp_path, monkeypatch):
    speed = _speed()
    cfg = yaml.safe_load(speed.SG2_SOLVE_CONFIG.read_text())
    cfg["model"]["losses"]["lpips"]["init_args"]["resize"] = None  # 32x32 images: no upsampling (fast)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(speed, "SG2_SOLVE_CONFIG", path)
    threads = torch.get_num_threads()
    try:
        rows = speed.solve_time(True, speed.CPU, size=32)
    finally:
        torch.set_num_threads(threads)
    assert [r["precision"] for r in rows] == ["32-true", "bf16-mixed"]
    for r in rows:
        # --quick scales the 300/200/200/100 steps by 0.02, at least 4 per stage
        assert r["steps"] == 6 + 4 + 4 + 4 and r["schedule"] == "0-1-3-5" and r["failed"] == 0
        assert r["total_s"] >= r["loop_s"] > 0 and r["ms_per_step"] > 0
        assert r["loss"] == r["loss"]  # finite, not NaN


def test_cuda_device_needs_a_gpu(capsys):
    speed = _speed()
    if torch.cuda.is_available():
        return
    import pytest

    with pytest.raises(SystemExit):
        speed.main(["--device", "cuda", "--sections", "overhead"])
    assert "no CUDA device" in capsys.readouterr().err


def test_op_count_script_counts_more_operators_on_the_device_path(capsys):
    _speed()
    mod = _script("op_count")
    threads = torch.get_num_threads()
    try:
        cpu, floor = mod.count("dcgan", 2, 1, "cpu")
        dev, floor2 = mod.count("dcgan", 2, 1, "device")
        assert mod.main(["--split", "1", "--top", "3"]) == 0
    finally:
        torch.set_num_threads(threads)
    n_cpu, n_dev, n_floor = (sum(c.by_op.values()) for c in (cpu, dev, floor))
    assert n_floor == sum(floor2.by_op.values()) > 0  # the floor is the same either way
    assert n_floor < n_cpu < n_dev  # the device path trades host reads for operators
    # places name ilo-pl's lines: the read-free projection runs on the device path only
    assert any("_project_l1_ball_no_reads_" in k for k in dev.by_place)
    assert not any("_project_l1_ball_no_reads_" in k for k in cpu.by_place)
    assert "operators per step" in capsys.readouterr().out
    # the switches the script flips are restored
    import ilo_pl.modules.ilo as ilo_mod

    assert ilo_mod._host_reads_free(torch.zeros(1)) is True

