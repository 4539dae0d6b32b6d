"""ILO+ in the benchmarks: the overlay configs, equal compute, the CSV's per-method configs, the
tuning grid of ``benchmarks/tune.py --plus`` and the report's ILO+ columns.

Random DCGAN weights and a synthetic face: the code paths are tested, not the quality.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import synthetic_face
from benchmarks import quality, report, tune
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.stages import Stage

ROOT = Path(__file__).resolve().parents[1]
TASK_FILES = {task: name for task, (name, _) in quality.TASKS.items()}


_face = synthetic_face


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _configs(tmp_path: Path, task: str, overlay: dict) -> Path:
    """A configs folder with the shipped config of ``task`` and ``overlay`` as its ILO+ file."""
    cfgs = tmp_path / "configs"
    (cfgs / "plus").mkdir(parents=True, exist_ok=True)
    name = TASK_FILES[task]
    (cfgs / name).write_text((ROOT / "configs" / name).read_text())
    (cfgs / "plus" / name).write_text(yaml.safe_dump(overlay))
    return cfgs


@pytest.fixture(scope="module")
def generator():
    return DCGANGenerator(weights="random")


# ------------------------------------------------------------------------------ shipped overlays
@pytest.mark.parametrize("task", list(quality.TASKS))
def test_every_task_has_an_ilo_plus_overlay_that_the_cli_parser_takes(task):
    cfg = quality.load_task_config(task, ROOT / "configs", plus=True)
    base = quality.load_task_config(task, ROOT / "configs")
    assert cfg.overlays == (ROOT / "configs" / "plus" / TASK_FILES[task],)
    assert cfg.label.startswith(f"{TASK_FILES[task]}+plus/{TASK_FILES[task]}@")
    # The overlay changes the solver, not the problems: same operator and grid argument.
    assert (cfg.operator_class, cfg.config_level) == (base.operator_class, base.config_level)
    # Its schedule is the task config's with at most the ILO stages' radii scaled by one factor
    # (tune.plus_plan's candidates), so a re-tuned task config cannot leave a stale copy behind.
    assert len(cfg.stages) == len(base.stages) and cfg.stages[0] == base.stages[0]
    factors = set()
    for a, b in zip(cfg.stages[1:], base.stages[1:]):
        assert (a.split, a.steps, a.lr, a.free, a.sna) == (b.split, b.steps, b.lr, b.free, b.sna)
        assert set(a.radius) == set(b.radius)
        factors |= {round(a.radius[k] / b.radius[k], 9) for k in a.radius}
    assert len(factors) <= 1


# ------------------------------------------------------------------------------ fingerprints
def test_options_added_later_do_not_change_a_fingerprint_at_their_neutral_value(tmp_path):
    src = yaml.safe_load((ROOT / "configs" / "superres.yaml").read_text())
    plain = tmp_path / "a"
    plain.mkdir()
    (plain / "superres.yaml").write_text(yaml.safe_dump(src))
    spelled = tmp_path / "b"
    spelled.mkdir()
    src["model"].update(restarts=1, consistency="none")
    (spelled / "superres.yaml").write_text(yaml.safe_dump(src))
    fa = quality.load_task_config("superres", plain).fingerprint
    assert quality.load_task_config("superres", spelled).fingerprint == fa
    src["model"].update(restarts=2)
    (spelled / "superres.yaml").write_text(yaml.safe_dump(src))
    assert quality.load_task_config("superres", spelled).fingerprint != fa
    assert "model.restarts" not in quality.neutral_excludes({"model": {"restarts": 2}})
    assert "model.restarts" in quality.neutral_excludes({"model": {}})


# ------------------------------------------------------------------------------ equal compute
def test_latent_steps_count_restarts_and_kept_restarts():
    st = [Stage(split=0, steps=100, lr=0.1, free=["latent"]), Stage(split=1, steps=50, lr=0.03, free=["state"])]
    assert quality.latent_steps(st) == 150
    assert quality.latent_steps(st, restarts=4) == 600
    assert quality.latent_steps(st, restarts=4, keep=1) == 450
    assert quality.latent_steps([]) == 0


def test_ilo_plus_at_csgm_compute_scales_every_stage(tmp_path):
    cfgs = _configs(tmp_path, "superres", {"model": {"restarts": 4, "restart_keep": 1}})
    cfg = quality.load_task_config("superres", cfgs)
    plus = quality.load_task_config("superres", cfgs, plus=True)
    total = cfg.total_steps
    plans = quality.plus_plans(plus, 1.0, total)
    stages, kwargs = plans["ilo_plus"]
    assert kwargs["restarts"] == 4 and kwargs["restart_keep"] == 1
    assert [s.steps for s in stages] == [s.steps for s in cfg.stages]  # equal steps
    eq, _ = plans["ilo_plus_eq"]
    cost = quality.latent_steps(eq, 4, 1)
    assert abs(cost - total) <= len(eq)  # rounding of each stage's steps
    assert all(a.steps < b.steps for a, b in zip(eq, stages))
    # Without restarts ILO+ already spends CSGM's compute: no second plan.
    cfgs2 = _configs(tmp_path / "two", "superres", {"model": {"consistency": "project"}})
    plus2 = quality.load_task_config("superres", cfgs2, plus=True)
    assert set(quality.plus_plans(plus2, 1.0, total)) == {"ilo_plus"}


def test_overlay_errors(tmp_path):
    cfgs = tmp_path / "configs"
    cfgs.mkdir()
    (cfgs / "superres.yaml").write_text((ROOT / "configs" / "superres.yaml").read_text())
    with pytest.raises(FileNotFoundError, match="ILO\\+ overlay .* does not exist"):
        quality.load_task_config("superres", cfgs, plus=True)
    twice = {"class_path": "ilo_pl.losses.MeasurementLoss"}
    bad = _configs(tmp_path / "bad", "superres", {"model": {"losses": {"mse": twice, "other": twice},
                                                            "loss_weights": {"mse": 1.0, "other": 0.1}}})
    with pytest.raises(ValueError, match="besides mse and stlpips"):
        quality.load_task_config("superres", bad, plus=True)


# ------------------------------------------------------------------------------ the run
def test_ilo_plus_rows_carry_their_config_and_do_not_block_the_others(tmp_path, generator):
    overlay = {"model": {
        "losses": {"mse": {"class_path": "ilo_pl.losses.MeasurementLoss"},
                   "stlpips": {"class_path": "ilo_pl.losses.STLPIPSLoss",
                               "init_args": {"net": "alex", "resize": 64}}},
        "loss_weights": {"mse": 1.0, "stlpips": 0.03},
        "consistency": "project", "restarts": 2, "restart_keep": 1,
    }}
    cfgs = _configs(tmp_path, "inpainting_random", overlay)
    images = _face(tmp_path / "images")
    s = quality.BenchmarkSettings(images=images, out=tmp_path / "out", tasks=["inpainting_random"],
                                  methods=("csgm", "ilo", "ilo_plus", "ilo_plus_eq"), config_dir=cfgs,
                                  quick=True, limit=1, steps_scale=0.02)
    rows = _rows(quality.run_benchmark(s, generator))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"csgm", "ilo", "ilo_plus", "ilo_plus_eq"}
    base = quality.load_task_config("inpainting_random", cfgs).label + "x0.02"
    plus = quality.plus_label(base, quality.load_task_config("inpainting_random", cfgs, plus=True))
    assert by["csgm"]["config"] == by["ilo"]["config"] == base and by["ilo_plus"]["config"] == plus
    # Restarts cost steps: ILO+ counts 2 restarts in CSGM, equal compute brings it back to CSGM's.
    assert int(by["ilo_plus"]["steps"]) > int(by["csgm"]["steps"])
    assert abs(int(by["ilo_plus_eq"]["steps"]) - int(by["csgm"]["steps"])) <= len(quality.load_task_config(
        "inpainting_random", cfgs).stages)
    # consistency: project pastes the observed pixels (inpainting): pasting changes nothing more.
    assert float(by["ilo_plus"]["true_mse_pasted"]) == pytest.approx(float(by["ilo_plus"]["true_mse"]), abs=1e-6)
    assert by["ilo_plus"]["stlpips"] != ""
    # A changed overlay is refused for the ILO+ rows only; the other methods resume untouched.
    overlay["model"]["loss_weights"]["stlpips"] = 0.1
    (cfgs / "plus" / "inpainting_random.yaml").write_text(yaml.safe_dump(overlay))
    with pytest.raises(ValueError, match="inpainting_random ilo_plus rows made with another config"):
        quality.run_benchmark(s, generator)
    s2 = quality.BenchmarkSettings(images=images, out=tmp_path / "out", tasks=["inpainting_random"],
                                   methods=("csgm", "ilo"), config_dir=cfgs, quick=True, limit=1, steps_scale=0.02)
    quality.run_benchmark(s2, generator)
    assert len(_rows(tmp_path / "out" / "quality_quick.csv")) == len(rows)


def test_ilo_plus_rows_of_a_changed_task_config_are_refused(tmp_path, generator):
    """ILO+ rows carry the task config's label too: after the task config changes, running ILO+ alone
    is refused beside the other methods' earlier rows."""
    cfgs = _configs(tmp_path, "superres", {"model": {"consistency": "project"}})
    images = _face(tmp_path / "images")

    def settings(*methods):
        return quality.BenchmarkSettings(images=images, out=tmp_path / "out", tasks=["superres"], methods=methods,
                                         config_dir=cfgs, quick=True, limit=1, steps_scale=0.01)

    rows = _rows(quality.run_benchmark(settings("csgm", "ilo_plus"), generator))
    base = quality.load_task_config("superres", cfgs).label + "x0.01"
    by = {r["method"]: r["config"] for r in rows}
    assert by["csgm"] == base and by["ilo_plus"].startswith(base + "+plus/superres.yaml@")
    assert quality.base_label(by["ilo_plus"]) == base
    cfg = yaml.safe_load((cfgs / "superres.yaml").read_text())
    cfg["model"]["stages"][1]["lr"] = 0.5
    (cfgs / "superres.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="superres rows made with another config"):
        quality.run_benchmark(settings("ilo_plus"), generator)


def test_an_overlay_may_not_change_the_problems(tmp_path):
    cfgs = _configs(tmp_path, "denoising", {"data": {"seed": 5}})
    with pytest.raises(ValueError, match="changes the data section.*not the problems"):
        quality.load_task_config("denoising", cfgs, plus=True)


# ------------------------------------------------------------------------------ tuning grid
def test_plus_grid_candidates():
    names = [c.name for c in tune.plus_phase1("superres", noisy=False)]
    assert names == ["ilo", "st0.03", "r0.5", "r2", "R4K1", "R6K6+A6", "project"]
    den = [c.name for c in tune.plus_phase1("denoising", noisy=True, weights=(0.03, 0.1))]
    assert den == ["ilo", "st0.03", "st0.1", "r0.5", "r2", "R4K1", "R6K6+A6", "prox"]
    cs = [c.name for c in tune.plus_phase1("compressed_sensing", noisy=False)]
    assert "st0.03" not in cs  # ST-LPIPS cannot compare CS measurements
    ilo = tune.PlusCandidate()
    st1, st3 = tune.PlusCandidate(stlpips=0.1), tune.PlusCandidate(stlpips=0.03)
    r, r2 = tune.PlusCandidate(radius_scale=0.5), tune.PlusCandidate(radius_scale=2.0)
    R, p = tune.PlusCandidate(restarts=4, restart_keep=1), tune.PlusCandidate(consistency="project")
    # Phase 2 combines what beat the config by 1% (the best ST-LPIPS weight and radius of those).
    (combo,) = tune.plus_phase2({ilo: 1.0, st1: 0.9, st3: 0.95, r: 0.98, r2: 0.97, R: 0.995, p: 0.9})
    assert combo == tune.PlusCandidate(stlpips=0.1, radius_scale=2.0, consistency="project")
    assert combo.name == "st0.1+r2+project"
    assert tune.plus_phase2({ilo: 1.0, st1: 0.9, r: 1.2}) == []  # one option: nothing to combine
    # A mean over restarts that gained is crossed with each radius scale; it drops a smaller keep.
    A = tune.PlusCandidate(restarts=6, restart_average=6)
    crossed = tune.plus_phase2({ilo: 1.0, A: 0.8, r: 1.2})
    assert [c.name for c in crossed] == ["r0.5+R6K6+A6", "r2+R6K6+A6"]
    both = tune.plus_phase2({ilo: 1.0, A: 0.8, R: 0.9, r2: 0.95})
    assert both[0] == tune.PlusCandidate(radius_scale=2.0, restarts=6, restart_average=6)  # R4K1's keep dropped
    assert [c.name for c in both[1:]] == ["r0.5+R6K6+A6"]  # r2+A6 is the combination already
    assert tune.plus_phase2({ilo: 1.0, A: 0.995, r: 0.9}) == []  # the mean did not gain: no crossing
    # Phase 3 pushes a best radius at the grid's edge one factor 2 further (and only then).
    assert tune.radius_extension(r2) == tune.PlusCandidate(radius_scale=4.0)
    assert tune.radius_extension(tune.PlusCandidate(radius_scale=4.0, consistency="project")).radius_scale == 8.0
    assert tune.radius_extension(r).radius_scale == 0.25
    assert tune.radius_extension(ilo) is None and tune.radius_extension(st1) is None


def _per_image(values):
    return {f"face{i}": v for i, v in enumerate(values)}


def test_nested_candidates_are_the_simpler_ones():
    ilo, A6 = tune.PlusCandidate(), tune.PlusCandidate(restarts=6, restart_average=6)
    rA6 = tune.PlusCandidate(radius_scale=0.5, restarts=6, restart_average=6)
    assert tune.nested(ilo, A6) and tune.nested(ilo, rA6) and tune.nested(A6, rA6)
    assert tune.nested(tune.PlusCandidate(radius_scale=0.5), rA6)
    assert not tune.nested(rA6, A6) and not tune.nested(A6, A6)
    assert not tune.nested(tune.PlusCandidate(radius_scale=2.0), rA6)  # another radius
    A12 = tune.more_restarts(A6)
    assert A12 == tune.PlusCandidate(restarts=12, restart_average=12) and A12.name == "R12K12+A12"
    assert tune.nested(A6, A12) and not tune.nested(A12, A6)
    assert tune.more_restarts(rA6).name == "r0.5+R12K12+A12"
    assert tune.more_restarts(ilo) is None and tune.more_restarts(tune.PlusCandidate(restarts=4, restart_keep=1)) is None
    # Every option counts: consistency, ST-LPIPS weight, kept and averaged restarts.
    prox, st = tune.PlusCandidate(consistency="prox"), tune.PlusCandidate(stlpips=0.03)
    assert tune.nested(prox, tune.PlusCandidate(radius_scale=0.5, consistency="prox"))
    assert not tune.nested(prox, tune.PlusCandidate(radius_scale=0.5))
    assert tune.nested(st, tune.PlusCandidate(stlpips=0.03, radius_scale=2.0))
    assert not tune.nested(tune.PlusCandidate(stlpips=0.1), tune.PlusCandidate(stlpips=0.03, radius_scale=2.0))
    assert not tune.nested(A6, tune.PlusCandidate(restarts=6))  # averaging is an option of its own
    assert not tune.nested(tune.PlusCandidate(restarts=4), tune.PlusCandidate(restarts=4, restart_keep=1))
    assert tune.nested(tune.PlusCandidate(restarts=4, restart_keep=1), A6)  # cheaper: A6 must beat it


def test_beats_needs_a_gain_beyond_one_and_one_paired_standard_error():
    base = _per_image([0.02, 0.03, 0.025, 0.04, 0.035, 0.022])
    steady = {k: v * 0.95 for k, v in base.items()}  # 5% better on every face
    assert tune.beats(steady, base) and not tune.beats(base, steady)
    tiny = {k: v * 0.995 for k, v in base.items()}  # consistent but under 1%
    assert not tune.beats(tiny, base)
    # 7% better in the mean, but from faces that swing both ways: inside one standard error.
    noisy = {k: v + d for (k, v), d in zip(base.items(), [-0.012, 0.008, -0.012, 0.008, -0.012, 0.008])}
    assert sum(noisy.values()) < 0.95 * sum(base.values())
    assert not tune.beats(noisy, base)
    # The threshold is one standard error of the mean difference, not its standard deviation: a
    # gain of about 1.5 standard errors (0.6 standard deviations) beats.
    dev = [0.001, -0.001, 0.001, -0.001, 0.001, -0.001]
    mid = {k: v - 0.0008 + e for (k, v), e in zip(base.items(), dev)}
    diffs = [mid[k] - base[k] for k in base]
    sd = (sum((x - sum(diffs) / 6) ** 2 for x in diffs) / 5) ** 0.5
    assert sd / 6 ** 0.5 < 0.0008 < sd  # between one standard error and one standard deviation
    assert tune.beats(mid, base)
    # Only common images are compared; one image has no standard error (the 1% rule alone), none
    # is an error.
    assert tune.beats({**steady, "extra": 9.0}, base)
    assert tune.beats({"a": 0.1}, {"a": 0.2, "b": 0.3}) and not tune.beats({"a": 0.199}, {"a": 0.2})
    with pytest.raises(ValueError, match="share no image"):
        tune.beats({"a": 0.1}, {"b": 0.2})


def test_plus_pick_takes_an_option_only_for_a_gain_beyond_the_noise():
    ilo, A6 = tune.PlusCandidate(), tune.PlusCandidate(restarts=6, restart_average=6)
    rA6, r = tune.PlusCandidate(radius_scale=0.5, restarts=6, restart_average=6), tune.PlusCandidate(radius_scale=0.5)
    base = _per_image([0.02, 0.03, 0.025, 0.04, 0.035, 0.022])
    mean6 = {k: v * 0.8 for k, v in base.items()}
    swing = [1.3, 0.7, 1.25, 0.72, 1.2, 0.72]  # 2% lower in the mean, from faces swinging both ways
    values = {ilo: base, A6: mean6, rA6: {k: v * f for (k, v), f in zip(mean6.items(), swing)}}
    assert sum(values[rA6].values()) < sum(mean6.values())  # the lowest mean ...
    assert tune.plus_pick(values) == A6  # ... but not beyond the noise against its simpler A6
    values[rA6] = {k: v * 0.9 for k, v in mean6.items()}
    assert tune.plus_pick(values) == rA6  # a steady 10%: taken
    # r0.5 alone within 0.5% of r0.5+A6: the lowest, r0.5+A6, does not beat its simpler r0.5, so the
    # pick is r0.5 (justified against ilo).
    values[r] = {k: v * 1.005 for k, v in values[rA6].items()}
    assert tune.plus_pick(values) == r
    assert tune.plus_pick({ilo: base, A6: {k: v * 0.995 for k, v in base.items()}}) == ilo
    with pytest.raises(ValueError, match="'ilo'"):
        tune.plus_pick({A6: mean6})


def test_pending_phase4_names_the_doubled_mean_until_it_ran():
    ilo, A6 = tune.PlusCandidate(), tune.PlusCandidate(restarts=6, restart_average=6)
    base = _per_image([0.02, 0.03, 0.025, 0.04])
    values, phases = {ilo: base, A6: {k: v * 0.8 for k, v in base.items()}}, {ilo: 1, A6: 1}
    assert tune.pending_phase4(values, phases) == tune.PlusCandidate(restarts=12, restart_average=12)
    A12 = tune.more_restarts(A6)
    values[A12], phases[A12] = {k: v * 0.7 for k, v in base.items()}, 4
    assert tune.pending_phase4(values, phases) is None  # run, and it does not ask for 24 in turn
    assert tune.pending_phase4({ilo: base}, {ilo: 1}) is None  # the pick averages nothing


def test_plus_plan_applies_the_options_to_the_config():
    cfg = quality.load_task_config("superres", ROOT / "configs")
    cand = tune.PlusCandidate(stlpips=0.03, radius_scale=0.5, restarts=4, restart_keep=1, consistency="project")
    stages, kw = tune.plus_plan(cfg, cand)
    assert stages[0].radius == cfg.stages[0].radius
    for a, b in zip(stages[1:], cfg.stages[1:]):
        assert a.radius["state"] == pytest.approx(0.5 * b.radius["state"]) and a.steps == b.steps
    assert kw["loss_weights"] == {"mse": 1.0, "stlpips": 0.03} and set(kw["losses"]) == {"mse", "stlpips"}
    assert (kw["restarts"], kw["restart_keep"], kw["consistency"]) == (4, 1, "project")
    assert cfg.module_kwargs.get("restarts") == 1  # the config's own kwargs are not changed
    assert kw["restart_average"] == 1
    _, kw = tune.plus_plan(cfg, tune.PlusCandidate(restarts=6, restart_average=6))
    assert (kw["restarts"], kw["restart_keep"], kw["restart_average"]) == (6, None, 6)


def test_plus_smoke_run_writes_rows_resumes_and_ranks(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "PLUS_STLPIPS", ())
    images = _face(tmp_path / "tune_faces")
    out = tmp_path / "out" / "tuning_plus.csv"
    tune.tune_plus(images, out, ["compressed_sensing"], weights=(), steps_scale=0.01)
    rows = tune.read_rows(out)
    assert [r["candidate"] for r in rows][:6] == ["ilo", "r0.5", "r2", "R4K1", "R6K6+A6", "project"]
    assert all(r["level"] == "0.05" and r["config"].endswith("x0.01") for r in rows)
    n = len(rows)
    tune.tune_plus(images, out, ["compressed_sensing"], weights=(), steps_scale=0.01)  # resumes
    assert len(tune.read_rows(out)) == n
    text = tune.plus_report(tune.read_rows(out))
    assert "### compressed_sensing (0.05;" in text and "| 1.00x |" in text
    ev = _face(tmp_path / "faces" / "64")  # refused by its name wherever it is
    with pytest.raises(ValueError, match="evaluation folder"):
        tune.main(["--plus", "--images", str(ev), "--out", str(tmp_path)])


# ------------------------------------------------------------------------------ report
def _row(task, level, method, mse, pasted="", protocol="primary"):
    return {"task": task, "level": level, "method": method, "protocol": protocol, "true_mse": str(mse),
            "true_mse_pasted": str(pasted), "image": "a", "psnr": "20", "ssim": "0.5", "lpips": "",
            "stlpips": "", "seconds": "1"}


def test_report_has_ilo_plus_columns_and_counts_wins():
    rows = [
        _row("inpainting_random", "0.1", "csgm", 0.06), _row("inpainting_random", "0.1", "ilo", 0.04, 0.035),
        _row("inpainting_random", "0.1", "ilo_plus", 0.025, 0.025),
        _row("inpainting_random", "0.1", "biharmonic", 0.028, 0.028, "baseline"),
        _row("denoising", "100", "csgm", 0.05), _row("denoising", "100", "ilo", 0.02),
        _row("denoising", "100", "ilo_plus", 0.04), _row("denoising", "100", "bm3d", 0.03, "", "baseline"),
    ]
    text = report.summary_table(rows)
    lines = text.strip().splitlines()
    assert lines[0].startswith("| task, level | CSGM | ILO | ILO+ | ILO / CSGM | ILO+ / CSGM |")
    assert lines[2] == ("| inpainting, 10% observed | 0.0600 | 0.0400 | 0.0250 | 0.67 (target 0.5 missed) | 0.42 "
                        "| biharmonic 0.0280 | ILO+ wins (biharmonic 1.12x) |")
    assert lines[3] == ("| denoising, sigma 100 | 0.0500 | 0.0200 | 0.0400 | 0.40 | 0.80 (target 0.5 missed) "
                        "| BM3D 0.0300 | **classical wins** (0.75x) |")
    assert lines[-1] == ("ILO beats the classical baseline at 1 of 2 grid points; ILO+ beats the classical "
                         "baseline at 1 of 2 grid points (inpainting: with the observed pixels pasted back).")
    table = report.results_table(rows)
    assert "| ILO+ | ILO+/CSGM |" in table and "classical vs ILO+" in table
    assert "| ILO+ at CSGM's compute |" not in table  # no restarts anywhere: no column, the note says why
    assert "no ILO+ config here runs restarts" in table
    # With restarts at one task, the others' cells say why they are empty.
    eq = rows + [_row("denoising", "100", "ilo_plus_eq", 0.045)]
    table = report.results_table(eq)
    assert "| ILO+ at CSGM's compute |" in table and "= ILO+ (no restarts)" in table


def test_summary_keeps_tasks_that_have_no_ilo_plus_rows_yet():
    """A grid run in parts: ILO+ rows for one task only; every task stays in the table, judged by ILO where
    ILO+ did not run, and the counts cover every point."""
    rows = [
        _row("inpainting_random", "0.1", "csgm", 0.06), _row("inpainting_random", "0.1", "ilo", 0.04, 0.035),
        _row("inpainting_random", "0.1", "ilo_plus", 0.025, 0.025),
        _row("inpainting_random", "0.1", "biharmonic", 0.028, 0.028, "baseline"),
        _row("denoising", "100", "csgm", 0.05), _row("denoising", "100", "ilo", 0.02),
        _row("denoising", "100", "bm3d", 0.03, "", "baseline"),
    ]
    lines = report.summary_table(rows).strip().splitlines()
    assert lines[3] == ("| denoising, sigma 100 | 0.0500 | 0.0200 | not run | 0.40 | not run | BM3D 0.0300 "
                        "| ILO wins (BM3D 1.50x) |")
    assert lines[-1].startswith("ILO beats the classical baseline at 1 of 2 grid points; ILO+ beats the "
                                "classical baseline at 1 of 1 grid points")


# ------------------------------------------------------------------------------ picture grid
def test_picture_grid_one_strip_per_task_and_never_overwrites(tmp_path, generator):
    from PIL import Image

    from benchmarks import pictures

    cfgs = _configs(tmp_path, "inpainting_random", {"model": {"consistency": "project"}})
    _configs(tmp_path, "compressed_sensing", {"model": {"consistency": "project"}})
    images = _face(tmp_path / "images")
    out = tmp_path / "faces.png"
    pictures.picture_grid(images, out, ["inpainting_random", "compressed_sensing"], config_dir=cfgs,
                          steps_scale=0.01, generator=generator)
    one = pictures.task_row("inpainting_random", images, 0, generator, cfgs, 0.01)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[1] == one.shape[1] and sheet.shape[0] == 2 * one.shape[0]  # two tasks, six tiles each
    with pytest.raises(FileExistsError, match="--overwrite"):
        pictures.picture_grid(images, out, ["inpainting_random"], config_dir=cfgs, generator=generator)
    with pytest.raises(FileNotFoundError, match="image folder"):
        pictures.picture_grid(tmp_path / "none", tmp_path / "x.png", ["inpainting_random"], generator=generator)


# ------------------------------------------------------------------------------ the overlays through the CLI
@pytest.mark.parametrize("task", list(quality.TASKS))
def test_ilo_plus_overlay_runs_through_ilo_pl_fit(task, tmp_path):
    """``ilo-pl fit --config configs/<task>.yaml --config configs/plus/<task>.yaml`` (steps cut to 2)."""
    from ilo_pl.cli import ILOCLI

    name = TASK_FILES[task]
    base, plus = ROOT / "configs" / name, ROOT / "configs" / "plus" / name
    merged = yaml.safe_load(base.read_text())["model"]
    merged.update(yaml.safe_load(plus.read_text())["model"])
    stages = [dict(s, steps=2) for s in merged["stages"]]
    out_dir = tmp_path / "runs"
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"model": {"stages": stages}, "data": {"limit": 1, "batch_size": 1},
                                     "output": {"output_dir": str(out_dir)}}))
    ILOCLI(args=["fit", "--config", str(base), "--config", str(plus), "--config", str(small),
                 "--trainer.enable_progress_bar", "false"])
    (run,) = sorted(out_dir.iterdir())
    (row,) = _rows(run / "results.csv")
    assert row["failed"] == "" and np.isfinite(float(row["true_mse"]))
    resolved = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert resolved["restarts"] == merged.get("restarts", 1)
    assert resolved["restart_average"] == merged.get("restart_average", 1)
    if merged.get("restart_average", 1) > 1:  # the image is the mean of the restarts, listed in the CSV
        assert len(row["averaged"].split()) == merged["restart_average"]
    assert [s["radius"] for s in resolved["stages"]] == [s.get("radius", {}) for s in merged["stages"]]
