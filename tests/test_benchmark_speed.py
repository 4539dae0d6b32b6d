"""Smoke tests of the timing benchmarks' parts (``benchmarks.speed``, ``.timing``, ``.op_count``,
``.floor_placement``); no timing is asserted."""

from __future__ import annotations

import pytest
import torch
import yaml

from benchmarks import floor_placement, op_count, speed, timing


def test_schedule_rows_run_the_shipped_config():
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
    torch.manual_seed(0)
    gen = timing.make_generator("dcgan")
    stages, kw = timing.stages_for("dcgan", 3, 6)
    bare = timing.time_bare_lightning(gen, stages[0], batch=2, warmup=1)
    ilo = timing.time_solve(gen, stages, 2, warmup=1, **kw)
    # 6 steps give 5 intervals between consecutive step starts; one is dropped as warm-up,
    # and for ILO also the stage's set-up step (timed before the stage transition).
    for got, kept in ((bare, 4), (ilo, 3)):
        acc = got[0]
        assert len(acc["ilo"]) == len(acc["ilo_cpu"]) == kept
        assert len(acc["floor"]) >= kept
        assert all(t > 0 for t in acc["ilo"] + acc["floor"])
    row = timing.summary(bare)
    assert row["steps"] == 4 and row["ratio"] > 0


def test_floor_placement_script_runs(capsys):
    threads = torch.get_num_threads()
    try:
        assert floor_placement.main(["--split", "4", "--batch", "1", "--loops", "2", "--steps", "3"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script pins one thread
    out = capsys.readouterr().out
    assert out.count("ms/step") == 2 and "max/min" in out


def test_memory_is_measured_in_a_fresh_module_process():
    """The memory section's child runs as ``python -m benchmarks.speed --memory-child SPEC``."""
    spec = dict(model="dcgan", split=2, batch=1, steps=2, kind="floor", threads=1, device="cpu")
    got = speed.memory_in_fresh_process(spec)
    assert set(got) == {"peak_rss_delta_mib"} and got["peak_rss_delta_mib"] >= 0


def test_block_timing_keeps_one_entry_per_timed_step_and_a_floor_block():
    torch.manual_seed(0)
    gen = timing.make_generator("dcgan")
    stages, kw = timing.stages_for("dcgan", 2, 7)
    bench = timing.Bench(timing="block")
    got = timing.time_solve(gen, stages, 2, warmup=2, bench=bench, **kw)
    acc = got[0]
    # steps 2..5 of 7 are timed as one block (index 2 up to the start of the last step): 4 entries
    assert len(acc["ilo"]) == len(acc["floor"]) == 4
    assert len(set(acc["ilo"])) == 1 and acc["ilo"][0] > 0 and acc["floor"][0] > 0
    bare = timing.time_bare_lightning(gen, stages[0], batch=2, warmup=2, bench=bench)
    assert len(bare[0]["ilo"]) == 4
    row = timing.summary(got, clock="wall")
    assert row["clock"] == "wall" and row["steps"] == 4 and row["ratio"] == row["ratio_wall"]


def test_block_timing_rejects_too_short_stages():
    gen = timing.make_generator("dcgan")
    stages, kw = timing.stages_for("dcgan", 1, 3)
    with pytest.raises(ValueError, match="at least warmup"):
        timing.time_solve(gen, stages, 1, warmup=2, bench=timing.Bench(timing="block"), **kw)


def test_solve_section_runs_the_shipped_schedule(tmp_path, monkeypatch):
    cfg = yaml.safe_load(speed.SG2_SOLVE_CONFIG.read_text())
    cfg["model"]["losses"]["lpips"]["init_args"]["resize"] = None  # 32x32 images: no upsampling (fast)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(speed, "SG2_SOLVE_CONFIG", path)
    threads = torch.get_num_threads()
    try:
        rows = speed.solve_time(True, timing.CPU, size=32)
    finally:
        torch.set_num_threads(threads)
    assert [r["precision"] for r in rows] == ["32-true", "bf16-mixed"]
    for r in rows:
        # --quick scales the 300/200/200/100 steps by 0.02, at least 4 per stage
        assert r["steps"] == 6 + 4 + 4 + 4 and r["schedule"] == "0-1-3-5" and r["failed"] == 0
        assert r["total_s"] >= r["loop_s"] > 0 and r["ms_per_step"] > 0
        assert r["loss"] == r["loss"]  # finite, not NaN


def test_cuda_device_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        return
    with pytest.raises(SystemExit):
        speed.main(["--device", "cuda", "--sections", "overhead"])
    assert "no CUDA device" in capsys.readouterr().err


def test_op_count_script_counts_more_operators_on_the_device_path(capsys):
    threads = torch.get_num_threads()
    try:
        cpu, floor = op_count.count("dcgan", 2, 1, "cpu")
        dev, floor2 = op_count.count("dcgan", 2, 1, "device")
        assert op_count.main(["--split", "1", "--top", "3"]) == 0
    finally:
        torch.set_num_threads(threads)
    n_cpu, n_dev, n_floor = (sum(c.by_op.values()) for c in (cpu, dev, floor))
    assert n_floor == sum(floor2.by_op.values()) > 0  # the floor is the same either way
    assert n_floor < n_cpu < n_dev  # the device path trades host reads for operators
    # places name ilo-pl's lines: the read-free projection runs on the device path only
    assert any("_project_l1_ball_no_reads_" in k for k in dev.by_place)
    assert not any("_project_l1_ball_no_reads_" in k for k in cpu.by_place)
    assert "operators per step" in capsys.readouterr().out
    # the host-reads policy the script sets is given back
    from ilo_pl.policy import host_reads_free

    assert host_reads_free(torch.zeros(1)) is True



def test_batching_section_rows(monkeypatch):
    """The batching section's rows, with its per-configuration child run in this process (a tiny smoke)."""
    ran = []

    def in_process(spec, malloc="keep"):
        ran.append((spec["model"], spec["modconv"], malloc, spec["batch"]))
        return speed._batching_child(spec)

    monkeypatch.setattr(speed, "batching_in_fresh_process", in_process)
    monkeypatch.setenv("ILO_PL_MALLOC", "system")  # the child's allocator call must not change this process
    threads = torch.get_num_threads()
    try:
        rows = speed.batching(True, 1, 1, batches={"dcgan": (1, 2), "sg2-tiny": (1, 2)}, steps_scale=0.1)
    finally:
        torch.set_num_threads(threads)
    # quick: the DCGAN under the default allocator; the StyleGAN-2 fixture fused and unfused
    assert ran == [("dcgan", None, "keep", 1), ("dcgan", None, "keep", 2),
                   ("sg2-tiny", "unfused", "keep", 1), ("sg2-tiny", "unfused", "keep", 2),
                   ("sg2-tiny", "fused", "keep", 1), ("sg2-tiny", "fused", "keep", 2)]
    assert len(rows) == 6 and {r["section"] for r in rows} == {"batching"}
    for r in rows:
        assert r["steps"] == 2 and r["per_image_ms"] > 0 and r["peak_mib"] >= 0 and r["clock"] == "cpu"
        assert r["per_image_ms"] == pytest.approx(r["step_cpu_ms"] / r["batch"], rel=1e-3)
        if r["batch"] == 1:
            assert r["per_image_vs_batch1"] == 1.0
    fused1 = next(r for r in rows if r["modconv"] == "fused" and r["batch"] == 1)
    assert fused1["vs_default_batch1"] == pytest.approx(fused1["per_image_ms"] / next(
        r for r in rows if r["modconv"] == "unfused" and r["batch"] == 1)["per_image_ms"], rel=1e-2)
    assert set(speed.TABLE_COLUMNS["batching"]) >= {"modconv", "malloc", "per_image_vs_batch1", "peak_per_image_mib",
                                                    "gflops", "conv_peak_gflops"}
    # the roofline: the DCGAN's flops per image, and the rate each batch size implies
    dc = [r for r in rows if r["model"] == "dcgan"]
    assert all(r["gflop_per_image"] == dc[0]["gflop_per_image"] > 0.1 for r in dc)
    for r in dc:
        assert r["gflops"] == pytest.approx(r["gflop_per_image"] / (r["per_image_ms"] / 1e3), rel=0.02)
        assert r["conv_peak_gflops"] > 0
    assert not any("gflops" in r for r in rows if r["model"] == "sg2-tiny")


def test_batching_child_gets_its_allocator_before_it_starts(monkeypatch):
    """The child's allocator is set in its environment (no child is started here: that costs ~20 s)."""
    import json
    import subprocess

    seen = {}

    def fake_run(cmd, env, **kw):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, 0, stdout='log\n{"ilo": [1.0], "ilo_cpu": [1.0], "peak_rss_delta_mib": 3.0}\n', stderr="")

    monkeypatch.setattr(speed.subprocess, "run", fake_run)
    spec = dict(model="dcgan", modconv=None, batch=2, steps=2, warmup=0, threads=1, device="cpu", timing="step")
    assert speed.batching_in_fresh_process(spec, "glibc")["peak_rss_delta_mib"] == 3.0
    assert seen["cmd"][-2:] == ["--batching-child", json.dumps(spec)]
    assert seen["env"]["ILO_PL_MALLOC"] == "system"  # the system's glibc, as without ilo-pl's settings
    speed.batching_in_fresh_process(spec, "keep")
    assert seen["env"]["ILO_PL_MALLOC"] == "keep"
    variants = speed.batching_variants("sg2-256", "cpu", quick=False)
    assert variants[:3] == [("unfused", "keep"), ("fused", "keep"), ("unfused", "glibc")]
    assert speed.batching_variants("sg2-256", "cuda", quick=False) == [("unfused", "keep"), ("fused", "keep")]
    assert "batching" in speed.CPU_OPT_IN
