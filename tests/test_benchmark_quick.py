"""Smoke and unit tests of the quality benchmark (``benchmarks.quality``, ``.report``, ``.baselines``).

One image, the configs' own grid point, a few steps: every method runs and
writes its CSV rows, the report is written, and a second run resumes without
recomputing. Plus the classical baselines' own properties and the errors, the
SNA and tuning scripts' parts, and the package's command lines.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_face
from benchmarks import baselines, quality, report, sna, tune
from ilo_pl.modules.generators import DCGANGenerator, LatentSphere
from ilo_pl.operators import CompressedSensing, Inpainting, PartialCirculant

ROOT = Path(__file__).resolve().parents[1]


_face = synthetic_face


@pytest.fixture(scope="module")
def generator():
    # Random weights: the code path is what is tested, not the quality.
    return DCGANGenerator(weights="random")


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_run_every_method_writes_rows_and_report(tmp_path, generator, monkeypatch):
    monkeypatch.setattr(baselines, "TV_STEPS", 5)  # the CS baseline's iterations: a smoke run
    images = _face(tmp_path / "images")
    out = tmp_path / "results"
    s = quality.BenchmarkSettings(
        images=images, out=out, tasks=["inpainting_random"], methods=quality.METHODS,
        quick=True, limit=1, steps_scale=0.01,
    )
    csv_path = quality.run_benchmark(s, generator)
    # The classical baseline of every other task, on the same code path.
    s_cls = quality.BenchmarkSettings(
        images=images, out=out, tasks=["inpainting_box", "denoising", "superres", "compressed_sensing"],
        methods=("classical",), quick=True, limit=1, steps_scale=0.01,
    )
    quality.run_benchmark(s_cls, generator)
    rows = _rows(csv_path)
    got = {(r["task"], r["method"]) for r in rows}
    for m in ("csgm", "pulse", "ilo", "ilo_r0.5", "ilo_r2", "ilo_best3", "biharmonic"):
        assert ("inpainting_random", m) in got, m
    for task, m in [("inpainting_box", "biharmonic"), ("denoising", "bm3d"), ("superres", "bicubic"),
                    ("compressed_sensing", "tv_lsq")]:
        assert (task, m) in got, (task, m)
    assert len(rows) == len(got)  # one image: one row per (task, method)
    for r in rows:
        assert r["image"] == "synthetic" and r["run"] == "quick"
        assert float(r["true_mse"]) >= 0 and np.isfinite(float(r["psnr"]))
        if r["task"].startswith("inpainting"):
            # Pasting the observed pixels back can only help.
            assert float(r["true_mse_pasted"]) <= float(r["true_mse"]) + 1e-6
        else:
            assert r["true_mse_pasted"] == ""
    # The configs' schedule is what ran: CSGM/PULSE get ILO's total steps.
    steps = {r["method"]: r["steps"] for r in rows if r["task"] == "inpainting_random"}
    assert steps["csgm"] == steps["pulse"] == steps["ilo"]
    # Best-of-3 takes the sweep member with the lowest measurement loss.
    sweep = {r["method"]: float(r["measurement_loss"]) for r in rows
             if r["task"] == "inpainting_random" and r["method"] in ("ilo", "ilo_r0.5", "ilo_r2")}
    best = next(r for r in rows if r["method"] == "ilo_best3")
    assert best["selected"] == min(sweep, key=sweep.get) and best["protocol"] == "secondary"

    # A second run finds every row done and adds none (resume).
    quality.run_benchmark(s, generator)
    assert len(_rows(csv_path)) == len(rows)

    written = report.write_report(csv_path, out)
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    table = (out / "quality_quick_table.md").read_text()
    assert "Inpainting, random mask" in table and "biharmonic" in table


def test_best_of_selects_by_measurement_loss_not_truth():
    rows = [
        {"method": "ilo", "image": "a", "measurement_loss": "0.3", "true_mse": "0.01", "seconds": "1"},
        {"method": "ilo_r2", "image": "a", "measurement_loss": "0.1", "true_mse": "0.50", "seconds": "1"},
        {"method": "ilo_r0.5", "image": "a", "measurement_loss": "0.2", "true_mse": "0.02", "seconds": "1"},
    ]
    (best,) = quality.best_of_rows(rows, ["ilo", "ilo_r0.5", "ilo_r2"], "ilo_best3")
    assert best["selected"] == "ilo_r2" and best["true_mse"] == "0.50" and best["method"] == "ilo_best3"
    # An image missing a sweep member gets no best-of row.
    assert quality.best_of_rows(rows[:2], ["ilo", "ilo_r0.5", "ilo_r2"], "ilo_best3") == []


def test_config_schedule_and_methods_follow_the_yaml():
    cfg = quality.load_task_config("inpainting_random", ROOT / "configs")
    plans = quality.method_plans(cfg, 1.0)
    stages, kw = plans["ilo"]
    assert [(s.split, s.steps) for s in stages] == [(s.split, s.steps) for s in cfg.stages]
    (csgm,) = plans["csgm"][0]
    assert csgm.split == cfg.stages[0].split and csgm.steps == cfg.total_steps
    assert plans["pulse"][1]["sphere"] is True and plans["csgm"][1]["sphere"] is False
    r2 = plans["ilo_r2"][0]
    for a, b in zip(r2, stages):
        for k, v in b.radius.items():
            assert a.radius[k] == pytest.approx(2 * v)
    # per-stage switches survive scaling: denoising runs SNA in its ILO stages only
    den = quality.load_task_config("denoising", ROOT / "configs")
    dplans = quality.method_plans(den, 0.5)
    for name in ("ilo", "ilo_r0.5", "ilo_r2"):
        assert [s.sna for s in dplans[name][0]] == [s.sna for s in den.stages] == [False, None, None, None, None]
        assert dplans[name][1]["sna"] is True and dplans[name][1]["sna_samples"] == 16


class _NoSphere(DCGANGenerator):
    """A generator that declares no sphere variable (as third-party generators may)."""

    def sphere_variables(self, split: int):
        return {}


def test_pulse_keeps_the_latent_on_a_sphere_and_the_configs_run_as_given():
    bare = _NoSphere(weights="random")
    pulse = quality.pulse_generator(bare)
    assert isinstance(pulse, LatentSphere) and pulse.inner is bare
    assert pulse.sphere_variables(0) == {"h": (1, 2, 3)}
    assert bare.sphere_variables(0) == {}  # ILO rows use the generator as ilo-pl fit would
    own = DCGANGenerator(weights="random")
    assert quality.pulse_generator(own) is own  # a generator with its own sphere keeps it


def test_grid_and_aliases():
    assert quality.expand_tasks(["inpainting"]) == ["inpainting_random", "inpainting_box"]
    assert quality.expand_tasks(["all"]) == list(quality.TASKS)
    assert quality.grid_levels("superres", 4, 64) == [2, 4, 8]
    assert quality.grid_levels("superres", 4, 1024) == [4, 8, 16, 32]
    assert quality.grid_levels("inpainting_box", [38, 55, 14, 49], 64) == [[38, 55, 14, 49]]
    assert quality.level_label("inpainting_box", [38, 55, 14, 49]) == "box[38,55,14,49]"


def test_errors(tmp_path, generator):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        quality.expand_tasks(["nope"])
    s = quality.BenchmarkSettings(images=tmp_path / "missing", out=tmp_path, tasks=["denoising"])
    with pytest.raises(FileNotFoundError, match="image folder .* does not exist"):
        quality.run_benchmark(s, generator)
    s = quality.BenchmarkSettings(images=tmp_path, out=tmp_path, tasks=["denoising"], methods=("magic",))
    with pytest.raises(ValueError, match="unknown methods"):
        quality.run_benchmark(s, generator)
    with pytest.raises(FileNotFoundError, match="pass --configs"):
        quality.load_task_config("denoising", tmp_path)
    with pytest.raises(FileNotFoundError, match="run the benchmark first"):
        report.write_report(tmp_path / "none.csv", tmp_path)
    with pytest.raises(ValueError, match="no classical baseline"):
        baselines.classical_baseline("deblur", None, torch.zeros(1, 3, 4, 4), 1, (3, 4, 4))
    with pytest.raises(TypeError, match="LinearOperator"):
        baselines.tv_least_squares(torch.nn.Identity(), torch.zeros(1, 3), (3, 1, 1))
    with pytest.raises(ValueError, match="does not fit"):
        baselines.biharmonic_inpaint(torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 4, 4))


# ----------------------------------------------------------------------------- baselines
def test_tv_gradient_adjoint_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, generator=g)
    p = torch.randn(2, 2, 3, 5, 7, dtype=torch.float64, generator=g)
    lhs = (baselines._grad(x) * p).sum()
    rhs = (x * baselines._grad_adjoint(p)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_tv_least_squares_batch_equals_per_sample_and_fits():
    shape = (3, 8, 8)
    ops = [PartialCirculant(shape, 96, seed=s) for s in (1, 2)]
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, *shape, generator=g) * 1.6 - 0.8
    batched = PartialCirculant.stack(ops)
    y = batched.A(x)
    both = baselines.tv_least_squares(batched, y, shape, weight=1e-3, steps=200)
    for i, op in enumerate(ops):
        alone = baselines.tv_least_squares(op, y[i : i + 1], shape, weight=1e-3, steps=200)
        assert torch.allclose(both[i : i + 1], alone, atol=1e-5)
    assert both.abs().max() <= 1
    # Fully sampled and a tiny TV weight: close to the truth.
    op = CompressedSensing(ratio=1.0, shared=True).build(shape, 0)
    full = baselines.tv_least_squares(op, op.A(x), shape, weight=1e-4, steps=300)
    assert (full - x).pow(2).mean() < 1e-3


def test_biharmonic_keeps_observed_pixels_and_fills_missing():
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, 16), torch.linspace(-0.5, 0.5, 16), indexing="ij")
    x = torch.stack([xx, yy, xx * yy]).unsqueeze(0).repeat(2, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 1, 16, 16, generator=g) < 0.3).float()
    op = Inpainting(mask)
    out = baselines.biharmonic_inpaint(op.A(x), op.mask)
    obs = mask.expand_as(x).bool()
    assert torch.allclose(out[obs], x[obs], atol=1e-6)
    # A smooth image is recovered far better than the zero fill.
    assert (out - x).pow(2).mean() < 0.05 * (op.A(x) - x).pow(2).mean()
    # Batch == per-sample.
    one = baselines.biharmonic_inpaint(op.A(x)[1:], mask[1:])
    assert torch.allclose(out[1:], one)


def test_bm3d_denoises():
    yy, xx = torch.meshgrid(torch.linspace(-0.6, 0.6, 32), torch.linspace(-0.6, 0.6, 32), indexing="ij")
    x = torch.stack([xx, yy, 0.5 * xx]).unsqueeze(0)
    g = torch.Generator().manual_seed(0)
    y = (x + 2 * 25 / 255 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    out = baselines.bm3d_denoise(y, 25)
    assert out.shape == x.shape
    assert (out - x).pow(2).mean() < 0.3 * (y - x).pow(2).mean()
    assert torch.equal(baselines.bm3d_denoise(y, 0), y)


# ------------------------------------------------------------- config options reach the solves
DCGAN_TASKS = list(quality.TASKS)


@pytest.mark.parametrize("task", DCGAN_TASKS)
def test_every_module_option_of_each_shipped_config_reaches_the_benchmark(task, tmp_path):
    """The benchmark reads configs through the CLI's parser: no module option is dropped."""
    import inspect

    import yaml

    from ilo_pl.modules.ilo import ILOModule

    name, _ = quality.TASKS[task]
    cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
    # Options the old benchmark dropped (it passed a fixed list of keys), set away from their defaults.
    cfg["model"].update(selection="last", log_every=3, rampdown=0.3, range_lr=0.07)
    (tmp_path / name).write_text(yaml.safe_dump(cfg))
    tc = quality.load_task_config(task, tmp_path)
    # Every ILOModule argument but the two the benchmark sets itself is carried, defaults included.
    params = set(inspect.signature(ILOModule.__init__).parameters) - {"self", "generator", "stages"}
    assert set(tc.module_kwargs) == params
    plans = quality.method_plans(tc, 1.0)
    assert set(plans) == {"csgm", "pulse", "ilo", "ilo_r0.5", "ilo_r2"}
    for method, (stages, kw) in plans.items():
        for key, value in cfg["model"].items():
            if key in ("generator", "stages") or (key == "sphere" and method in ("csgm", "pulse")):
                continue
            assert kw[key] == value, (method, key)
        module = ILOModule(DCGANGenerator(weights="random"), stages, **kw)
        assert module.selection == "last" and module.log_every == 3 and module.rampdown == 0.3
    assert [s.split for s in plans["ilo"][0]] == [s["split"] for s in cfg["model"]["stages"]]


def test_run_benchmark_solves_with_the_configs_options(tmp_path, generator, monkeypatch):
    """End to end: the options reach ``solve`` (captured), and the problems come from the config's data module."""
    import types

    import yaml

    import ilo_pl.api

    cfg = yaml.safe_load((ROOT / "configs" / "denoising.yaml").read_text())
    cfg["model"].update(selection="last", log_every=5)
    cfg["data"]["resize"] = "resize"
    cfgs = tmp_path / "configs"
    cfgs.mkdir()
    (cfgs / "denoising.yaml").write_text(yaml.safe_dump(cfg))
    seen = []

    def fake_solve(generator, operator, observation, stages, target=None, seeds=None, ids=None, **kw):
        seen.append(kw)
        return types.SimpleNamespace(images=target.clone())

    monkeypatch.setattr(ilo_pl.api, "solve", fake_solve)
    images = _face(tmp_path / "images")
    s = quality.BenchmarkSettings(images=images, out=tmp_path / "out", tasks=["denoising"],
                                  methods=("csgm", "pulse", "ilo"), config_dir=cfgs, quick=True, limit=1)
    rows = _rows(quality.run_benchmark(s, generator))
    assert len(seen) == 3
    for kw in seen:
        assert kw["selection"] == "last" and kw["log_every"] == 5 and kw["sna"] is True
    assert {r["config"] for r in rows} == {quality.load_task_config("denoising", cfgs).label}
    # A changed config is refused, and the earlier rows stay as they were.
    before = (tmp_path / "out" / "quality_quick.csv").read_text()
    cfg["model"]["stages"][1]["lr"] = 0.5
    (cfgs / "denoising.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="another config"):
        quality.run_benchmark(s, generator)
    assert (tmp_path / "out" / "quality_quick.csv").read_text() == before
    # log_every does not change results: it is not in the fingerprint.
    cfg["model"]["stages"][1]["lr"] = cfg["model"]["stages"][2]["lr"]
    cfg["model"]["log_every"] = 50
    (cfgs / "denoising.yaml").write_text(yaml.safe_dump(cfg))
    quality.run_benchmark(s, generator)
    assert (tmp_path / "out" / "quality_quick.csv").read_text() == before


def test_grid_point_problems_come_from_the_config_data_module(tmp_path, generator):
    cfg = quality.load_task_config("compressed_sensing", ROOT / "configs")
    images = _face(tmp_path / "images")
    batch = quality.make_problems(cfg, 0.05, images, generator, seed=3, limit=1)
    from ilo_pl.data import problem_seed

    assert batch.ids == ["synthetic"] and batch.seeds == [problem_seed(3, 0)]
    assert batch.observation.shape[-1] == round(0.05 * 3 * 64 * 64)


# ------------------------------------------------------------------------------- SNA table
def _sna_row(sigma, method, on, image, psnr=20.0, mse=0.04, config="c@1"):
    return {"sigma": sigma, "method": method, "sna": on, "id": image, "psnr": psnr, "true_mse": mse, "config": config}


def test_sna_rows_merge_by_sigma_method_and_image_and_keep_other_sigmas(tmp_path):
    old = [_sna_row(s, m, on, i) for s in (50.0, 100.0) for m, on in sna.ORDER for i in ("a", "b")]
    new = [_sna_row(100.0, m, on, i, psnr=30.0) for m, on in sna.ORDER for i in ("a", "b")]
    merged, replaced = sna.merge_rows(old, new)
    n = len(sna.ORDER) * 2
    assert replaced == n and len(merged) == 2 * n
    path = tmp_path / "sna.csv"
    sna.write_rows(path, merged)
    back = sna.read_rows(path)
    assert {float(r["psnr"]) for r in back if float(r["sigma"]) == 50.0} == {20.0}
    assert {float(r["psnr"]) for r in back if float(r["sigma"]) == 100.0} == {30.0}
    table = sna.table(back)
    assert "| 50 | " in table and "| 100 | " in table and "**" in table
    # Rows written by the earlier sna.py (fewer columns, booleans as text) still merge.
    legacy = [{"method": "ILO", "sna": "True", "sigma": "50.0", "id": "a", "psnr": "1", "true_mse": "1"}]
    merged, replaced = sna.merge_rows(legacy, [_sna_row(50.0, "ILO", True, "a")])
    assert replaced == 1 and len(merged) == 1


def test_sna_table_flags_mixed_configs_and_images():
    rows = [_sna_row(50.0, m, on, "a") for m, on in sna.ORDER]
    rows[0] = _sna_row(50.0, "CSGM", False, "b", config="other@2")
    table = sna.table(rows)
    assert "different images" in table and "2 configs" in table


# ------------------------------------------------------------------------------- tuning
def test_tune_refuses_the_evaluation_faces(tmp_path):
    ev = tmp_path / "shared" / "faces" / "64"
    _face(ev)
    with pytest.raises(ValueError, match="evaluation folder"):
        tune.check_tuning_folder(ev, eval_folders=[ev])
    with pytest.raises(ValueError, match="evaluation folder"):  # by its name, wherever it is
        tune.check_tuning_folder(ev, eval_folders=[])
    copy = tmp_path / "mine"
    copy.mkdir()
    (copy / "x.png").write_bytes((ev / "synthetic.png").read_bytes())
    with pytest.raises(ValueError, match="copy of the evaluation image"):
        tune.check_tuning_folder(copy, eval_folders=[ev])
    other = _face(tmp_path / "tune_faces")
    (other / "synthetic.png").write_bytes(b"not the same bytes")
    tune.check_tuning_folder(other, eval_folders=[ev])  # a disjoint folder is accepted
    with pytest.raises(ValueError, match="evaluation folder"):  # the shipped ones are refused by default
        tune.main(["--images", str(ROOT.parent / "shared" / "benchmark" / "faces" / "64"), "--out", str(tmp_path)])


def test_tune_candidates_keep_the_total_steps_and_the_config_structure():
    cfg = quality.load_task_config("denoising", ROOT / "configs")
    cands = tune.candidates() + tune.split_candidates(tune.candidates()[0])
    assert len(cands) == len(set(cands)) == 8
    for cand in cands:
        stages = tune.candidate_stages(cfg.stages, cand)
        assert sum(s.steps for s in stages) == tune.TOTAL_STEPS
        assert stages[0].steps == cand.csgm_steps and stages[0].lr == tune.CSGM_LR
        assert [s.split for s in stages] == [s.split for s in cfg.stages]
        assert [s.sna for s in stages] == [s.sna for s in cfg.stages]  # SNA stays where the config has it
        assert [s.radius["state"] for s in stages[1:]] == [r * cand.radius_scale for r in tune.BASE_RADII]
        assert all(s.lr == cand.ilo_lr for s in stages[1:])


def test_tune_smoke_run_writes_rows_resumes_and_ranks(tmp_path, monkeypatch):
    images = _face(tmp_path / "tune_faces")
    out = tmp_path / "out" / "tuning.csv"
    grid = {"csgm_steps": (200,), "ilo_lr": (0.01, 0.03), "radius_scale": (1.0,), "split_steps": (300,)}
    tune.tune(images, out, ["inpainting_box"], grid, steps_scale=0.01)
    rows = tune.read_rows(out)
    assert sorted(r["candidate"] for r in rows)[:2] == ["z200_lr0.01_r1", "z200_lr0.03_r1"]
    assert len(rows) == 3 and all(r["image"] == "synthetic" for r in rows)
    phase2 = [r for r in rows if r["csgm_steps"] == "3"]  # 300 x 0.01
    assert len(phase2) == 1
    tune.tune(images, out, ["inpainting_box"], grid, steps_scale=0.01)  # resumes: nothing new
    assert len(tune.read_rows(out)) == 3
    text = tune.report(tune.read_rows(out))
    assert "### inpainting_box" in text and text.count("**") == 2


def test_summary_table_is_the_readme_table_from_the_csv_rows():
    def row(task, level, method, mse, pasted="", protocol="primary"):
        return {"task": task, "level": level, "method": method, "protocol": protocol, "true_mse": str(mse),
                "true_mse_pasted": str(pasted), "image": "a"}

    rows = [
        row("inpainting_random", "0.1", "csgm", 0.06), row("inpainting_random", "0.1", "ilo", 0.04, 0.035),
        row("inpainting_random", "0.1", "biharmonic", 0.028, 0.028, "baseline"),
        row("inpainting_random", "1", "csgm", 0.05), row("inpainting_random", "1", "ilo", 0.004, 0.0),
        row("inpainting_random", "1", "biharmonic", 0.0, 0.0, "baseline"),
        row("denoising", "100", "csgm", 0.05), row("denoising", "100", "ilo", 0.02),
        row("denoising", "100", "bm3d", 0.03, "", "baseline"),
    ]
    text = report.summary_table(rows)
    lines = text.strip().splitlines()
    assert len(lines) == 6  # header, rule, 10% inpainting, sigma 100 (100% observed is left out), count
    assert lines[-1] == ("ILO beats the classical baseline at 1 of 2 grid points (inpainting: with the observed "
                         "pixels pasted back).")
    assert lines[2] == ("| inpainting, 10% observed | 0.0600 | 0.0400 | 0.67 (target 0.5 missed) | biharmonic 0.0280 "
                        "| **classical wins** (0.80x) |")
    assert lines[3] == "| denoising, sigma 100 | 0.0500 | 0.0200 | 0.40 | BM3D 0.0300 | ILO wins (BM3D 1.50x) |"


# ------------------------------------------------------------------------------- the package
def test_report_orders_the_tasks_of_the_benchmark():
    assert report.TASK_ORDER == tuple(quality.TASKS)
    assert set(baselines.BASELINE_NAMES) == set(quality.TASKS)


def test_no_benchmark_edits_sys_path_or_imports_a_sibling_file():
    """Benchmarks are a package: ``benchmarks.*`` imports only (``_script`` is the run-by-path hand-over)."""
    files = sorted((ROOT / "benchmarks").glob("*.py"))
    siblings = {p.stem for p in files} - {"_script"}
    for path in files:
        text = path.read_text()
        assert "sys.path" not in text or path.name == "_script.py", path.name
        for line in text.splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] not in siblings, (path.name, line)


@pytest.mark.parametrize("how", [["-m", "benchmarks.sna"], ["benchmarks/sna.py"]])
def test_scripts_run_as_modules_and_by_path(how, tmp_path):
    """``python -m benchmarks.sna`` and ``python benchmarks/sna.py`` run the same code (its --report here)."""
    rows = [_sna_row(50.0, m, on, "a") for m, on in sna.ORDER]
    out = tmp_path / "sna.csv"
    sna.write_rows(out, rows)
    proc = subprocess.run([sys.executable, *how, "--report", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == sna.table(sna.read_rows(out)).strip()


def test_nvlabs_speed_times_every_generator_per_split(tmp_path):
    from benchmarks import nvlabs_speed

    out = tmp_path / "nvlabs_speed.csv"
    assert nvlabs_speed.main(["--steps", "1", "--warmup", "0", "--repeats", "1", "--splits", "0", "3",
                              "--impls", "unfused", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [(r["impl"], r["split"]) for r in rows] == [("unfused", "0"), ("unfused", "3")]
    for r in rows:
        for name in ("rosinality", "stylegan2ada", "stylegan3t"):
            assert float(r[f"{name}_ms"]) > 0
        assert float(r["stylegan3t_ratio"]) == pytest.approx(float(r["stylegan3t_ms"]) / float(r["rosinality_ms"]), rel=1e-2)
