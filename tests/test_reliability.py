"""Reliability: reproducible solutions, resume after a kill, determinism, bad input, progress.

The expensive runs (``ilo-pl fit`` in this process, and one real subprocess
that is killed) are shared through module-scoped fixtures and kept tiny: four
synthetic 64x64 faces-sized images, three stages of five steps.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from conftest import TINY
from ilo_pl.api import default_trainer_kwargs, solve
from ilo_pl.callbacks.progress import (
    OptimizationGIF,
    ProblemProgressBar,
    ProblemTQDMProgressBar,
    problem_label,
)
from ilo_pl.callbacks.writer import ResultWriter
from ilo_pl.cli import ILOCLI, install_problem_progress_bar, main
from ilo_pl.data import GeneratorSamples as GeneratorSamplesBase
from ilo_pl.data import ImageFolder, InverseProblemDataModule
from ilo_pl.io import load_image
from ilo_pl.losses.base import LossContext, LossTerm
from ilo_pl.modules import ILOModule
from ilo_pl.policy import host_reads as host_reads_policy
from ilo_pl.modules.generators import DCGANGenerator
from ilo_pl.operators import BoxMask
from ilo_pl.problem import check_problem_ids
from ilo_pl.resume import prepare_resume, scan_run
from ilo_pl.solutions import load_solution, regenerate, regenerate_file
from ilo_pl.stages import Stage

# In-process `ilo-pl` runs pass their arguments explicitly; pytest's own argv is not theirs.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

IDS = ["img_0", "img_1", "img_2", "img_3"]

CONFIG = """
model:
  generator: {{class_path: ilo_pl.modules.generators.DCGANGenerator}}
  stages:
    - {{split: 0, steps: {steps}, lr: 0.1, free: [latent]}}
    - {{split: 1, steps: {steps}, lr: 0.1, free: [state], radius: {{state: 500.0}}}}
    - {{split: 2, steps: {steps}, lr: 0.1, free: [state], radius: {{state: 300.0}}}}
  log_every: 5
data:
  data: {data}
  operator: {{class_path: ilo_pl.operators.BoxMask, init_args: {{box: [38, 55, 14, 49]}}}}
  batch_size: 1
  seed: 0
trainer:
  enable_progress_bar: false
"""


def _write_images(folder: Path, n: int = 4) -> Path:
    """``n`` smooth, distinct 64x64 RGB images (no external data needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    for i in range(n):
        rgb = np.stack([(xx + 0.2 * i) % 1, yy, 0.5 + 0.5 * np.sin(6 * xx * yy + i)], -1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"img_{i}.png")
    return folder


def _config(folder: Path, data: Path, steps: int = 5) -> Path:
    path = folder / "config.yaml"
    path.write_text(CONFIG.format(data=data, steps=steps))
    return path


def _files(run: Path, suffixes=(".png", ".pt")) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.suffix in suffixes}


def _csv(run: Path) -> List[Dict[str, str]]:
    with open(run / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _writer(cli: ILOCLI) -> ResultWriter:
    return next(c for c in cli.trainer.callbacks if isinstance(c, ResultWriter))


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rel")
    _write_images(root / "faces")
    _config(root, root / "faces")
    return root


@pytest.fixture(scope="module")
def reference_run(setup_dir: Path) -> Path:
    """One uninterrupted run of the 4-problem config, in this process."""
    run = setup_dir / "reference"
    main(["fit", "--config", str(setup_dir / "config.yaml"), "--output.run_dir", str(run)])
    return run


# -- 1. saved solutions reproduce ------------------------------------------------------
def test_regenerate_command_reproduces_saved_reconstruction(reference_run, tmp_path):
    for pid in IDS:
        sol_path = reference_run / f"{pid}_solution.pt"
        out = tmp_path / f"{pid}.png"
        main(["regenerate", "--solution", str(sol_path), "--config", str(reference_run / "config.yaml"),
              "--out", str(out)])
        assert out.read_bytes() == (reference_run / f"{pid}_reconstruction.png").read_bytes()
        image = regenerate_file(sol_path, reference_run / "config.yaml")
        saved = load_solution(sol_path)
        assert image.dtype == torch.float32 and image.shape == (1, 3, 64, 64)
        assert (image - saved["image"]).abs().max().item() <= 1e-6
        # the solution records what resume needs
        assert saved["index"] == IDS.index(pid) and saved["row"]["id"] == pid


def test_regenerate_refuses_other_generator_and_non_solutions(reference_run, tmp_path):
    sol = reference_run / "img_0_solution.pt"
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="made with another generator.*weights_sha1"):
        regenerate(sol, DCGANGenerator(weights="random"))
    half = tmp_path / "half_solution.pt"
    half.write_bytes(sol.read_bytes()[:1000])  # a half-written file
    with pytest.raises(ValueError, match="half_solution.pt is not a valid ilo-pl solution file"):
        load_solution(half)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not an ilo-pl solution file"):
        load_solution(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        regenerate_file(sol, tmp_path / "missing.yaml")
    (tmp_path / "nogen.yaml").write_text("data: {seed: 0}\n")
    with pytest.raises(ValueError, match="has no model.generator entry"):
        regenerate_file(sol, tmp_path / "nogen.yaml")


def test_regenerate_refuses_generator_with_other_render_settings(tmp_path):
    """The latent space and the Gaussian fit change what a saved state renders to: part of the identity."""
    from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator
    from ilo_pl.problem import Solution
    from ilo_pl.solutions import save_solution

    if not TINY.is_file():
        pytest.fail(f"missing fixture {TINY}: the shared fixtures must be at ../shared/fixtures")

    def build(**kw):  # noqa: ANN003, ANN202
        return StyleGAN2Generator.from_checkpoint(TINY, mean_latent_samples=64, **kw)

    made = build(latent_space="gaussian_fit", gaussian_fit_samples=500)
    state = made.init_variables(1, torch.Generator().manual_seed(2))
    with torch.no_grad():
        image = made.render(state, 0)
    path = tmp_path / "p_solution.pt"
    save_solution(path, Solution(split=0, stage=0, state=state), made, image[0])
    torch.testing.assert_close(regenerate(path, build(latent_space="gaussian_fit", gaussian_fit_samples=500)), image)
    for other, key in [(dict(latent_space="w+"), "latent_space"),
                       (dict(latent_space="gaussian_fit", gaussian_fit_samples=1000), "gaussian_fit_samples"),
                       (dict(latent_space="gaussian_fit", gaussian_fit_samples=500, stats_seed=1), "stats_seed")]:
        gen = build(**other)
        with torch.no_grad():  # the check matters: this generator renders the state differently
            assert (gen.render(state, 0) - image).abs().max() > 1e-3, key
        with pytest.raises(ValueError, match=rf"made with another generator \(.*setting\.{key}: saved"):
            regenerate(path, gen)
        assert regenerate(path, gen, check_identity=False).shape == image.shape  # the escape hatch
    # settings that only move a solve's start are not part of the identity
    assert build(latent_space="w+", init_truncation=0.5).identity() == build(latent_space="w+").identity()
    # a solution written before settings were recorded: rendered, with a warning
    old = load_solution(path)
    old["generator"] = {k: v for k, v in old["generator"].items() if not k.startswith("setting.")}
    with pytest.warns(UserWarning, match="predates recorded generator settings; .*setting.latent_space"):
        regenerate(old, build(latent_space="gaussian_fit", gaussian_fit_samples=500))


# -- 3. determinism -----------------------------------------------------------------------
def test_same_config_same_outputs_bit_for_bit(setup_dir, reference_run):
    again = setup_dir / "again"
    main(["fit", "--config", str(setup_dir / "config.yaml"), "--output.run_dir", str(again)])
    a, b = _files(reference_run), _files(again)
    assert sorted(a) == sorted(b) and len(a) == 4 * 5  # 4 PNGs + 1 solution per problem
    for name in a:
        if name.endswith(".png"):
            assert a[name] == b[name], name
    for pid in IDS:
        sa, sb = load_solution(reference_run / f"{pid}_solution.pt"), load_solution(again / f"{pid}_solution.pt")
        assert sa["split"] == sb["split"] and sa["stage"] == sb["stage"]
        assert torch.equal(sa["image"], sb["image"])
        assert sa["state"].keys() == sb["state"].keys()
        assert all(torch.equal(sa["state"][k], sb["state"][k]) for k in sa["state"])
    assert _csv(reference_run) == _csv(again)


# -- 2. resume ---------------------------------------------------------------------------------
def test_resume_after_sigkill_solves_each_problem_once(setup_dir, reference_run):
    run = setup_dir / "killed"
    log = setup_dir / "killed.log"
    cmd = [sys.executable, "-m", "ilo_pl.cli", "fit", "--config", str(setup_dir / "config.yaml"),
           "--output.run_dir", str(run)]
    with open(log, "w") as err:
        # one thread, as in this process (tests/conftest.py)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=env)
    first = run / "img_0_solution.pt"
    deadline = time.monotonic() + 400
    try:
        while not first.exists():
            assert proc.poll() is None, f"the run ended before the kill:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no solution after 400 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
        proc.wait()
    solved = sorted(p.name for p in run.glob("*_solution.pt"))
    assert solved and len(solved) < len(IDS), f"the kill did not land mid-run: {solved}"
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("img_0_*")}
    (run / ".img_1_solution.pt.abc123.tmp").write_bytes(b"half")  # what a kill mid-write leaves

    cli = ILOCLI(args=["fit", "--config", str(setup_dir / "config.yaml"), "--output.run_dir", str(run)])
    writer = _writer(cli)
    done_before = [IDS.index(n.replace("_solution.pt", "")) for n in solved]
    assert writer.resumed == done_before
    assert sorted(writer.written) == [pid for i, pid in enumerate(IDS) if i not in done_before]
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("img_0_*")} == before  # not rewritten
    assert not list(run.glob(".*.tmp"))
    rows = _csv(run)
    assert [r["id"] for r in rows] == IDS and [r["index"] for r in rows] == ["0", "1", "2", "3"]
    # the resumed run's outputs are those of an uninterrupted run
    assert _files(run) == _files(reference_run)
    assert rows == _csv(reference_run)


def test_resume_rebuilds_csv_and_ignores_half_written_files(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    (run / "results.csv").unlink()  # killed before the CSV caught up
    sol = run / "img_2_solution.pt"
    sol.write_bytes(sol.read_bytes()[: sol.stat().st_size // 2])  # cannot happen with atomic writes; still safe
    (run / "img_3_solution.pt").unlink()  # PNGs written, solution not yet: unfinished
    (run / ".img_3_grid.png.xyz.tmp").write_bytes(b"")
    with pytest.warns(UserWarning, match="img_2_solution.pt does not load"):
        scan = prepare_resume(run, IDS)
    assert scan.finished == [0, 1]
    assert [r["id"] for r in _csv(run)] == ["img_0", "img_1"]
    assert _csv(run) == _csv(reference_run)[:2]  # rows rebuilt from the solutions
    assert not list(run.glob(".*.tmp"))
    # without solutions the CSV row alone marks a problem finished
    assert scan_run(run, IDS, require_solution=False).finished == [0, 1]


def test_resume_refuses_other_config(reference_run, setup_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", ".ilo-pl-run"):  # an ilo-pl run folder: its config and its marker
        shutil.copy(reference_run / name, run / name)
    with pytest.raises(ValueError, match=r"cannot resume .*data.seed: 0 -> 1\. Start a new run folder"):
        main(["fit", "--config", str(setup_dir / "config.yaml"), "--output.run_dir", str(run), "--data.seed", "1"])


def _resume_copy(reference_run: Path, setup_dir: Path, tmp_path: Path) -> tuple:
    """A finished copy of the reference run reading its own copy of the images: ``(run, config, faces)``."""
    faces = tmp_path / "faces"
    shutil.copytree(setup_dir / "faces", faces)
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    old_faces = str(setup_dir / "faces")
    text = (run / "config.yaml").read_text()
    assert old_faces in text
    (run / "config.yaml").write_text(text.replace(old_faces, str(faces)))
    cfg = _config(tmp_path, faces)
    return run, cfg, faces


def _mtimes(run: Path) -> Dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir()}


def test_resume_refuses_other_result_settings(reference_run, setup_dir, tmp_path):
    run, cfg, _ = _resume_copy(reference_run, setup_dir, tmp_path)
    assert (run / "run_manifest.json").is_file()
    before = _mtimes(run)
    for args, what in [(["--trainer.precision", "bf16-mixed"], "trainer setting precision: '32-true' -> 'bf16-mixed'"),
                       (["--trainer.accumulate_grad_batches", "2"], "trainer setting accumulate_grad_batches: 1 -> 2"),
                       (["--trainer.gradient_clip_val", "1.0"], "trainer setting gradient_clip_val: 0.0 -> 1.0")]:
        with pytest.raises(ValueError, match=rf"cannot resume .*{re.escape(what)}.*Start a new run folder"):
            main(["fit", "--config", str(cfg), "--output.run_dir", str(run), *args])
        assert _mtimes(run) == before, args  # refused before anything in the folder was touched
    # settings that do not change results may differ (and the default spelled out is the default)
    cli = ILOCLI(args=["fit", "--config", str(cfg), "--output.run_dir", str(run), "--trainer.precision", "32",
                       "--trainer.enable_progress_bar", "true", "--trainer.log_every_n_steps", "1"])
    assert _writer(cli).resumed == [0, 1, 2, 3] and _writer(cli).written == []


def test_resume_refuses_changed_data_folder(reference_run, setup_dir, tmp_path):
    import json

    run, cfg, faces = _resume_copy(reference_run, setup_dir, tmp_path)
    cli = ILOCLI(args=["fit", "--config", str(cfg), "--output.run_dir", str(run)])  # same files: accepted
    assert _writer(cli).resumed == [0, 1, 2, 3]
    # Only the modification time changed (e.g. copied without -p): the contents are not recorded,
    # so this is accepted with a warning naming the file, and the manifest records the new time.
    st = (faces / "img_1.png").stat()
    os.utime(faces / "img_1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match=r"img_1\.png modified since recorded.*assumed unchanged"):
        cli = ILOCLI(args=["fit", "--config", str(cfg), "--output.run_dir", str(run)])
    assert _writer(cli).resumed == [0, 1, 2, 3] and _writer(cli).written == []
    files = {f["name"]: f for f in json.loads((run / "run_manifest.json").read_text())["problems"]["files"]}
    assert files["img_1.png"]["mtime_ns"] == st.st_mtime_ns + 10**9
    before = _mtimes(run)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(faces / "img_2.png")  # edited: another size
    shutil.copy(faces / "img_0.png", faces / "img_00.png")  # sorts before img_1: indices shift
    (faces / "img_3.png").rename(faces / "img_9.png")  # renamed
    with pytest.raises(ValueError, match=r"cannot resume .*data folder: added img_00\.png, img_9\.png; data folder: "
                                         r"removed img_3\.png; data folder: changed size img_2\.png.*indices, seeds "
                                         r"and masks.*Start a new run folder"):
        main(["fit", "--config", str(cfg), "--output.run_dir", str(run)])
    assert _mtimes(run) == before


def test_image_folder_fingerprint_reads_no_file(tmp_path, monkeypatch):
    """Name, size and mtime_ns per file: cheap for 70k images (before: a SHA-1 of every file, every run)."""
    import builtins
    import io

    folder = _write_images(tmp_path / "f", 2)
    src = ImageFolder(folder)

    def no_reading(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError(f"fingerprint opened {args[0] if args else kwargs}")

    monkeypatch.setattr(builtins, "open", no_reading)
    monkeypatch.setattr(io, "open", no_reading)
    fp = src.fingerprint()
    monkeypatch.undo()
    assert fp["files"] == [{"name": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
                           for p in sorted(folder.iterdir())]


def test_run_manifest_records_effective_settings_and_files(reference_run):
    import json

    manifest = json.loads((reference_run / "run_manifest.json").read_text())
    settings = manifest["settings"]
    assert settings["accelerator"] == "CPUAccelerator" and settings["precision"] == "32-true"
    assert settings["accumulate_grad_batches"] == 1 and settings["deterministic"] is False
    files = manifest["problems"]["files"]
    assert [f["name"] for f in files] == [f"{pid}.png" for pid in IDS]
    assert all(set(f) == {"name", "size", "mtime_ns"} and f["size"] > 0 for f in files)
    # what else changes results: the generator, the module's and the data module's settings
    assert manifest["generator"] == load_solution(reference_run / "img_0_solution.pt")["generator"]
    module = manifest["module"]
    assert module["class"] == "ilo_pl.modules.ilo.ILOModule"
    assert [(st["split"], st["steps"]) for st in module["stages"]] == [(0, 5), (1, 5), (2, 5)]
    assert module["losses"] == {"mse": {"class": "ilo_pl.losses.base.MeasurementLoss"}} and module["loss_weights"] == {"mse": 1.0}
    assert {k: module[k] for k in ("sna", "sphere", "selection", "project_to_range")} == {
        "sna": False, "sphere": False, "selection": "best", "project_to_range": False}
    assert {"sna_samples", "range_steps", "range_lr", "rampup", "rampdown"} <= set(module)
    assert manifest["data"] == {"seed": 0, "resize": "center_crop",
                                "operator": {"class": "ilo_pl.operators.inpainting.BoxMask", "box": [38, 55, 14, 49]}}


def _api_fit(run: Path, folder: Path, stages=None, seed: int = 0, box=(38, 55, 14, 49), gen=None,
             **module_kwargs) -> ResultWriter:
    """A Python-API run (no config.yaml) of the images in ``folder`` into ``run``."""
    stages = stages or [Stage(split=0, steps=2, lr=0.1, free=["latent"])]
    writer = ResultWriter(run_dir=run)
    kw = default_trainer_kwargs()
    kw.update(accelerator="cpu", callbacks=[writer])
    dm = InverseProblemDataModule(BoxMask(box=box), data=str(folder), seed=seed)
    pl.Trainer(**kw).fit(ILOModule(gen if gen is not None else DCGANGenerator(), stages, **module_kwargs), datamodule=dm)
    return writer


def test_python_api_resume_refuses_other_stages_seed_or_generator(tmp_path):
    """The manifest covers the module, data module and generator: a Python-API resume has no config.yaml."""
    import json

    from ilo_pl.losses.base import GeodesicLoss, MeasurementLoss

    folder = _write_images(tmp_path / "faces", 2)
    run = tmp_path / "run"
    assert _api_fit(run, folder).written == ["img_0", "img_1"]
    before = _mtimes(run)
    torch.manual_seed(0)
    other_gen = DCGANGenerator(weights="random")
    three = [Stage(split=0, steps=3, lr=0.1, free=["latent"])]
    for kwargs, what in [(dict(stages=three), "module setting stages.0.steps: 2 -> 3"),
                         (dict(seed=1), "data setting seed: 0 -> 1"),
                         (dict(box=(30, 55, 14, 49)), "data setting operator.box.0: 38 -> 30"),
                         (dict(gen=other_gen), "generator weights_sha1: "),
                         (dict(selection="last"), "module setting selection: 'best' -> 'last'"),
                         (dict(losses={"mse": MeasurementLoss(), "geo": GeodesicLoss("pair_sum")},
                               loss_weights={"mse": 1.0, "geo": 0.0}), "module setting losses.geo: (unset) -> ")]:
        with pytest.raises(ValueError, match=rf"cannot resume .*{re.escape(what)}.*Start a new run folder"):
            _api_fit(run, folder, **kwargs)
        assert _mtimes(run) == before, kwargs  # refused before anything in the folder was touched
    again = _api_fit(run, folder)  # the same settings: resumed, nothing redone
    assert again.resumed == [0, 1] and again.written == []
    before = _mtimes(run)  # (resuming rewrote results.csv, with the same rows)

    # A folder that holds no result yet cannot mix results: its manifest is replaced, not a refusal.
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run / "run_manifest.json", empty / "run_manifest.json")
    assert _api_fit(empty, folder, seed=1).written == ["img_0", "img_1"]
    assert json.loads((empty / "run_manifest.json").read_text())["data"]["seed"] == 1
    # ... but results under other ids (here: another data folder's) still count as results.
    other = _write_images(tmp_path / "other", 2)
    for p in sorted(other.iterdir()):
        p.rename(other / p.name.replace("img_", "pic_"))
    with pytest.raises(ValueError, match=r"cannot resume .*data folder: added pic_0\.png, pic_1\.png"):
        _api_fit(run, other)
    assert _mtimes(run) == before


def test_torch_settings_are_named_as_such():
    from ilo_pl.manifest import manifest_differences

    old = {"settings": {"precision": "32-true", "float32_matmul_precision": "highest"}}
    new = {"settings": {"precision": "32-true", "float32_matmul_precision": "high"}}
    assert manifest_differences(old, new) == [
        "torch setting float32_matmul_precision (set by torch.set_float32_matmul_precision, not a trainer "
        "argument): 'highest' -> 'high'"]


def test_resume_config_message_recommends_a_new_run_folder(tmp_path):
    """A folder of an older ilo-pl lacks newer options: no --config resumes it, a new folder is the fix."""
    from ilo_pl.cli import check_resume_config

    old = tmp_path / "config.yaml"
    old.write_text("model:\n  losses:\n    geo: {class_path: ilo_pl.losses.base.GeodesicLoss}\ndata: {seed: 0}\n")
    newer = ("model:\n  losses:\n    geo: {class_path: ilo_pl.losses.base.GeodesicLoss, init_args: {reduction: authors}}\n"
             "data: {seed: 0}\n")
    with pytest.raises(ValueError, match=r"Start a new run folder \(leave out --output.run_dir\) "
                                         r"\(model.losses.geo.init_args.reduction: not in its config.yaml; if these are "
                                         r"options added since the ilo-pl version"):
        check_resume_config(old, newer)
    with pytest.raises(ValueError, match=r"data.seed: 0 -> 1\. Start a new run folder .*; if the differences are "
                                         r"your own overrides, resume without them \(--config "):
        check_resume_config(old, "model:\n  losses:\n    geo: {class_path: ilo_pl.losses.base.GeodesicLoss}\n"
                                 "data: {seed: 1}\n")


def test_resume_ignores_solution_recorded_for_another_problem(tmp_path):
    """An older ilo-pl's ids (a.png and a_png.bmp both ``a_png``): the solution records which problem it is."""
    from ilo_pl.problem import Solution
    from ilo_pl.resume import write_csv
    from ilo_pl.solutions import save_solution

    gen = DCGANGenerator()
    run = tmp_path / "run"
    run.mkdir()

    def write(pid: str, index: int) -> Dict[str, object]:
        state = gen.init_variables(1, torch.Generator().manual_seed(index))
        with torch.no_grad():
            image = gen.render(state, 0)
        row = {"index": index, "id": pid, "measurement_loss": 0.5, "best_stage": 0, "split": 0}
        save_solution(run / f"{pid}_solution.pt", Solution(split=0, stage=0, state=state), gen, image[0],
                      index=index, row=row)
        return row

    # The old run: index 0 -> a_jpg; index 1 (a.png) and index 2 (a_png.bmp) both -> a_png; index 2 wrote last.
    rows = [write("a_jpg", 0), write("a_png", 2)]
    write_csv(run / "results.csv", rows)
    names = ["a_jpg", "a_png", "a_png_bmp"]  # the new ids of a.jpg, a.png, a_png.bmp
    scan = scan_run(run, names)
    assert scan.finished == [0]  # before: [0, 1], index 1 counted finished with index 2's result
    assert [p.name for p, _ in scan.mismatched] == ["a_png_solution.pt"]
    kept = (run / "a_png_solution.pt").read_bytes()
    with pytest.warns(UserWarning, match=r"a_png_solution\.pt does not belong to this problem: it holds the result of "
                                         r"problem index 2, not of 'a_png' \(index 1\).*kept as "
                                         r"a_png_solution\.pt\.index2\.bak"):
        scan = prepare_resume(run, names)
    assert scan.finished == [0] and [r["id"] for r in _csv(run)] == ["a_jpg"]
    assert not (run / "a_png_solution.pt").exists()  # problem 1 is solved again ...
    assert (run / "a_png_solution.pt.index2.bak").read_bytes() == kept  # ... without losing index 2's result
    # Without solutions, a CSV row recorded for another index does not count either.
    write_csv(run / "results.csv", rows)
    with pytest.warns(UserWarning, match=r"results\.csv does not belong to this problem: its row for 'a_png' records "
                                         r"problem index 2, not 1"):
        assert prepare_resume(run, names, require_solution=False).finished == [0]
    # A solution that does match wins over a stale CSV row.
    write("a_png", 1)
    write_csv(run / "results.csv", rows)
    assert scan_run(run, names).finished == [0, 1]
    assert scan_run(run, names).rows[1]["index"] == "1"


def test_resume_failure_on_rank_zero_reaches_every_rank(tmp_path, monkeypatch):
    """Any exception while rank 0 prepares the folder is broadcast: other ranks raise instead of hanging."""
    from types import SimpleNamespace

    class Strategy:
        def __init__(self, incoming=None) -> None:  # noqa: ANN001
            self.sent, self.incoming = "nothing", incoming

        def broadcast(self, obj):  # noqa: ANN001, ANN202
            self.sent = obj
            return obj if self.incoming is None else self.incoming

    def trainer(rank: int, strategy: Strategy) -> SimpleNamespace:
        dm = SimpleNamespace(skip=set(), source=object())
        return SimpleNamespace(is_global_zero=rank == 0, world_size=2, strategy=strategy, datamodule=dm)

    class DiskGone(Exception):
        pass

    for exc, other_rank in [(OSError("disk gone"), OSError), (ValueError("bad folder"), ValueError),
                            (DiskGone("disk gone"), RuntimeError)]:
        writer = ResultWriter(run_dir=tmp_path)

        def fail(trainer, dm, exc=exc):  # noqa: ANN001, ANN202
            raise exc

        monkeypatch.setattr(writer, "_scan", fail)
        zero = Strategy()
        with pytest.raises(type(exc)) as got:  # rank 0: the original exception
            writer._resume(trainer(0, zero))
        assert got.value is exc
        payload = zero.sent
        assert payload == ("error", type(exc).__name__, str(exc)), payload  # before: never broadcast (OSError)
        with pytest.raises(other_rank, match=str(exc)):  # rank 1 gets it by broadcast
            ResultWriter(run_dir=tmp_path)._resume(trainer(1, Strategy(incoming=payload)))


def test_problem_id_rules_are_stated_exactly():
    # What is valid in a POSIX file name is accepted, even what Windows forbids.
    check_problem_ids(["a:b", 'q*?"<>|', "CON", "x. ", "naïve"])
    with pytest.raises(ValueError) as err:
        check_problem_ids(["../x"])
    msg = str(err.value)
    assert "use letters" not in msg  # before: told to use only letters, digits, '_', '-' and '.'
    assert ("An id must be a non-empty string of at most 200 UTF-8 bytes without '/', '\\', control characters "
            "or a leading '.'") in msg


def test_clashing_file_names_get_distinct_ids_and_outputs(tmp_path):
    from ilo_pl.data import folder_ids

    folder = tmp_path / "faces"
    folder.mkdir()
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    for i, name in enumerate(["a.png", "a.jpg", "a_png.bmp"]):
        rgb = np.stack([(xx + 0.3 * i) % 1, yy, 0.5 + 0.5 * np.sin(5 * xx + i)], -1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / name)
    src = ImageFolder(folder)
    assert [src.name(i) for i in range(3)] == ["a_jpg", "a_png", "a_png_bmp"]  # before: a_jpg, a_png, a_png
    stages = [Stage(split=0, steps=2, lr=0.1, free=["latent"])]
    run = tmp_path / "run"
    writer = ResultWriter(run_dir=run)
    kw = default_trainer_kwargs()
    kw.update(accelerator="cpu", callbacks=[writer])
    dm = InverseProblemDataModule(BoxMask(box=(38, 55, 14, 49)), data=str(folder), batch_size=2)
    pl.Trainer(**kw).fit(ILOModule(DCGANGenerator(), stages), datamodule=dm)
    assert sorted(p.name for p in run.glob("*_solution.pt")) == sorted(f"{i}_solution.pt" for i in ("a_jpg", "a_png", "a_png_bmp"))
    assert {r["id"]: r["index"] for r in _csv(run)} == {"a_jpg": "0", "a_png": "1", "a_png_bmp": "2"}
    for index, pid in enumerate(["a_jpg", "a_png", "a_png_bmp"]):
        assert load_solution(run / f"{pid}_solution.pt")["index"] == index  # each problem its own file
    assert scan_run(run, ["a_jpg", "a_png", "a_png_bmp"]).finished == [0, 1, 2]

    # No id equals another file's id, ignoring case, for any names over a small, clash-prone alphabet.
    import random

    rng = random.Random(0)
    for _ in range(300):
        names = sorted({"".join(rng.choice("aA._b") for _ in range(rng.randint(1, 4))) + rng.choice([".png", ".jpg", ".PNG"])
                        for _ in range(rng.randint(2, 8))})
        names = [n for n in names if not n.startswith(".")]
        ids = folder_ids(names)
        assert len({i.casefold() for i in ids}) == len(ids), (names, ids)
        assert ids == folder_ids(list(names)), "stable"
        check_problem_ids(ids)


def test_unsafe_problem_ids_are_refused(tmp_path):
    gen, op, y, stages = _tiny_problem()
    run = tmp_path / "run"
    for ids, why in [(["../x", "y"], "path separator"), (["a\\b", "y"], "path separator"), ([".x", "y"], "starts with '.'"),
                     (["x", "x"], "given twice"), (["x", "X"], "ignoring case"), (["x" * 201, "y"], "longer than 200 bytes"),
                     (["x\ny", "y"], "control character"), (["", "y"], "empty")]:
        with pytest.raises(ValueError, match=rf"solve\(ids=\.\.\.\): .*{re.escape(why)}"):
            solve(gen, op, y, stages, ids=ids, callbacks=[ResultWriter(run_dir=run)], trainer_kwargs={"accelerator": "cpu"})
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # before: ../x wrote x_*.png beside the run folder
    # A source whose names are unsafe is refused by the writer before any problem is solved.

    class _Bad(GeneratorSamplesBase):
        def name(self, index: int) -> str:
            return f"../escape{index}"

    writer = ResultWriter(run_dir=run)
    kw = default_trainer_kwargs()
    kw.update(accelerator="cpu", callbacks=[writer])
    dm = InverseProblemDataModule(BoxMask(box=(38, 55, 14, 49)), data=_Bad(num=1))
    with pytest.raises(ValueError, match=r"the problem ids of _Bad: '\.\./escape0' cannot name output files"):
        pl.Trainer(**kw).fit(ILOModule(gen, stages), datamodule=dm)
    assert not list(tmp_path.rglob("*escape*"))


# -- 5. bad input ------------------------------------------------------------------------------
def test_unreadable_files_in_folder_are_skipped_with_warning(tmp_path):
    folder = _write_images(tmp_path / "f", 2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match=r"skipping .*broken\.png: not a readable image"):
        src = ImageFolder(folder)
    assert [src.name(i) for i in range(len(src))] == ["img_0", "img_1"]
    dm = InverseProblemDataModule(BoxMask(box=(38, 55, 14, 49)), data=str(folder))
    with pytest.warns(UserWarning):
        dm.bind(DCGANGenerator(weights="random"))
    batch = dm.make_batch([0, 1])  # the rest continue
    assert batch.ids == ["img_0", "img_1"] and batch.target.shape == (2, 3, 64, 64)


def test_image_modes_are_converted(tmp_path):
    gray = np.full((64, 64), 255, np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:32, :, 3] = 255  # top half opaque white, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    sixteen = np.full((64, 64), 32768, np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    g = load_image(tmp_path / "gray.png")
    assert g.shape == (3, 64, 64) and torch.all(g == 1)
    a = load_image(tmp_path / "rgba.png")
    assert a.shape == (3, 64, 64) and torch.all(a[:, :32] == 1) and torch.all(a[:, 32:] == -1)
    s = load_image(tmp_path / "g16.png")
    assert s.shape == (3, 64, 64) and torch.allclose(s, torch.full_like(s, 32768 / 65535 * 2 - 1), atol=1e-6)


def test_image_size_policy(tmp_path):
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match="is 80x100 but the generator makes 64x64"):
        load_image(tmp_path / "wide.png", size=(64, 64), policy="error")
    for policy in ("center_crop", "resize"):
        assert load_image(tmp_path / "wide.png", size=(64, 64), policy=policy).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="unknown resize policy 'stretch'"):
        load_image(tmp_path / "wide.png", size=(64, 64), policy="stretch")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable image in"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")


def test_unwritable_output_folder(setup_dir, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("a regular file: nothing can be created below it (even as root)")
    cfg = str(setup_dir / "config.yaml")
    with pytest.raises(PermissionError, match="cannot create the output folder .*afile/sub"):
        main(["fit", "--config", cfg, "--output.output_dir", f"{afile}/sub"])
    with pytest.raises(PermissionError, match="cannot create the run folder .*afile/run"):
        main(["fit", "--config", cfg, "--output.run_dir", f"{afile}/run"])


def test_checkpoint_of_other_architecture_names_keys(tmp_path):
    bad = tmp_path / "other.pt"
    torch.save({"netG_state_dict": {"encoder.weight": torch.zeros(2, 2)}}, bad)
    keys = r"not a DCGAN.*missing keys \['main.0.weight'.*unexpected keys \['encoder.weight'\]"
    with pytest.raises(ValueError, match=keys):
        DCGANGenerator(weights=bad)


class _NaNForFirstSample(LossTerm):
    """Measurement MSE; in a batch of two, sample 0 turns non-finite after ``after`` calls.

    ``mode="loss"``: ``sqrt`` of a negative number, NaN in the loss and in the
    gradient. ``mode="grad"``: ``sqrt(u)`` at ``u = 0`` -- the loss stays finite
    but the gradient is not.
    """

    def __init__(self, mode: str = "loss", after: int = 2) -> None:
        super().__init__()
        self.mode, self.after, self.calls = mode, after, 0

    def forward(self, ctx: LossContext) -> torch.Tensor:
        self.calls += 1
        err = ctx.measurement_error
        if err.shape[0] != 2 or self.calls <= self.after:
            return err
        out = err.clone()
        if self.mode == "loss":
            out[0] = torch.sqrt(-err[0] - 1)
        else:
            out[0] = err[0] + torch.sqrt(err[0] - err[0].detach())
        return out


def _solve_samples(run: Path, batch_size: int, mode: str = "loss", skip=()) -> ResultWriter:
    stages = [Stage(split=0, steps=4, lr=0.1, free=["latent"]),
              Stage(split=1, steps=3, lr=0.1, free=["state"], radius={"state": 500.0}),
              Stage(split=2, steps=3, lr=0.1, free=["state"], radius={"state": 300.0})]
    module = ILOModule(DCGANGenerator(), stages, losses={"mse": _NaNForFirstSample(mode)})
    dm = InverseProblemDataModule(BoxMask(box=(38, 55, 14, 49)), data="samples", batch_size=batch_size)
    dm.skip |= set(skip)
    writer = ResultWriter(run_dir=run)
    kw = default_trainer_kwargs()
    kw.update(accelerator="cpu", callbacks=[writer])
    pl.Trainer(**kw).fit(module, datamodule=dm)
    return writer


@pytest.fixture(scope="module")
def alone_runs(tmp_path_factory):  # noqa: ANN201
    """``alone_runs(host_reads)``: ``grace_hopper`` solved alone (the NaN loss only acts in batches of two).

    Under the same host-read policy as the pair it is compared with: the policy also
    picks the l1 projection's implementation (equal results up to float rounding).
    """
    runs = {}

    def get(host_reads: bool) -> Path:
        if host_reads not in runs:
            run = tmp_path_factory.mktemp("alone")
            with host_reads_policy(host_reads):
                _solve_samples(run, batch_size=1, skip={0})
            runs[host_reads] = run
        return runs[host_reads]

    return get


@pytest.mark.parametrize("host_reads", [True, False], ids=["cpu-host-reads", "device-path"])
@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_nan_in_one_sample_marks_it_failed_and_spares_its_batch_mate(mode, host_reads, alone_runs, tmp_path):
    # device-path: the bookkeeping an accelerator runs (no host reads), exercised on the CPU
    alone_run = alone_runs(host_reads)
    with host_reads_policy(host_reads):
        _solve_samples(tmp_path / "pair", batch_size=2, mode=mode)
    rows = {r["id"]: r for r in _csv(tmp_path / "pair")}
    assert "non-finite loss or gradient (NaN/inf) at stage 0, step 2" in rows["astronaut"]["failed"]
    assert rows["grace_hopper"]["failed"] == ""
    assert (tmp_path / "pair" / "astronaut_reconstruction.png").is_file()  # best finite iterate kept
    sol = load_solution(tmp_path / "pair" / "astronaut_solution.pt")
    assert all(torch.isfinite(v).all() for v in sol["state"].values())
    # the healthy problem is solved exactly as if it were alone
    alone = _csv(alone_run)
    assert [r["id"] for r in alone] == ["grace_hopper"] and alone[0] == rows["grace_hopper"]
    for name in ("grace_hopper_reconstruction.png", "grace_hopper_grid.png"):
        assert (tmp_path / "pair" / name).read_bytes() == (alone_run / name).read_bytes()
    a = load_solution(tmp_path / "pair" / "grace_hopper_solution.pt")
    b = load_solution(alone_run / "grace_hopper_solution.pt")
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


# -- 6. progress ------------------------------------------------------------------------------
def test_problem_label():
    assert problem_label(["a"]) == "a"
    assert problem_label(["a", "b"]) == "a,b"
    assert problem_label(["x" * 30, "y" * 30, "z"], max_chars=40) == "x" * 30 + " +2"


class _RecordingBar(ProblemTQDMProgressBar):
    def __init__(self) -> None:
        super().__init__()
        self.seen: List[dict] = []

    def get_metrics(self, trainer, pl_module):  # noqa: ANN001, ANN201
        m = super().get_metrics(trainer, pl_module)
        self.seen.append(m)
        return m


def _tiny_problem():
    gen = DCGANGenerator()
    x = gen(gen.init_variables(2, torch.Generator().manual_seed(5)))
    op = BoxMask(box=(38, 55, 14, 49)).build((3, 64, 64), 0)
    stages = [Stage(split=0, steps=4, lr=0.1, free=["latent"]),
              Stage(split=2, steps=4, lr=0.1, free=["state"], radius={"state": 300.0})]
    return gen, op, op.A(x).detach(), stages


def test_progress_bar_shows_problem_stage_and_loss():
    gen, op, y, stages = _tiny_problem()
    bar = _RecordingBar()
    solve(gen, op, y, stages, ids=["cat", "dog"], callbacks=[bar], log_every=2,
          trainer_kwargs={"enable_progress_bar": True, "accelerator": "cpu"})
    last = bar.seen[-1]
    assert last["problem"] == "cat,dog (1/1)"
    assert last["stage"] == "2/2 (split 2)"
    assert "loss" in last and list(last)[:2] == ["problem", "stage"]


def test_cli_installs_problem_progress_bar():
    for bar in (pl.callbacks.RichProgressBar(), pl.callbacks.TQDMProgressBar()):
        trainer = pl.Trainer(callbacks=[bar], logger=False, enable_checkpointing=False)
        install_problem_progress_bar(trainer)
        assert isinstance(trainer.progress_bar_callback, (ProblemProgressBar, ProblemTQDMProgressBar))


def test_optimization_gif_does_not_change_results(tmp_path):
    gen, op, y, stages = _tiny_problem()
    gif = OptimizationGIF(every_n_steps=3, output_dir=tmp_path)
    with_gif = solve(gen, op, y, stages, ids=["cat", "dog"], callbacks=[gif], trainer_kwargs={"accelerator": "cpu"})
    without = solve(gen, op, y, stages, ids=["cat", "dog"], trainer_kwargs={"accelerator": "cpu"})
    assert torch.equal(with_gif.images, without.images)
    for pid in ("cat", "dog"):
        with Image.open(tmp_path / f"{pid}_progress.gif") as im:
            # every 3rd step + the result (a frame equal to the one before it would be merged)
            assert im.size == (64, 64) and im.n_frames == 8 // 3 + 1
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        OptimizationGIF(every_n_steps=0)


def test_cli_logger_and_gif_write_into_run_folder(setup_dir, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "trainer:\n"
        "  logger: {class_path: pytorch_lightning.loggers.CSVLogger, init_args: {save_dir: ., name: logs}}\n"
        "  log_every_n_steps: 5\n"
        "  callbacks:\n"
        "    - {class_path: ilo_pl.callbacks.progress.OptimizationGIF, init_args: {every_n_steps: 4}}\n"
        "data: {limit: 1}\n"
    )
    run = tmp_path / "run"
    main(["fit", "--config", str(setup_dir / "config.yaml"), "--config", str(extra), "--output.run_dir", str(run)])
    with open(run / "logs" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i in range(3):
        values = [float(r[f"loss/mse/stage{i}"]) for r in rows if r.get(f"loss/mse/stage{i}")]
        assert values and all(np.isfinite(values)), f"no stage {i} loss logged"
    with Image.open(run / "img_0_progress.gif") as im:
        assert im.n_frames == 15 // 4 + 1


def test_a_run_folder_that_names_the_old_loss_class_resumes():
    """``MSELoss`` was renamed ``MeasurementLoss``: manifests written before name the old class."""
    import warnings

    from ilo_pl.losses.base import MeasurementLoss, MSELoss
    from ilo_pl.manifest import compare_manifests, describe_module

    new = {"module": {"losses": {"mse": describe_module(MeasurementLoss())}}}
    old = {"module": {"losses": {"mse": {"class": "ilo_pl.losses.base.MSELoss"}}}}
    assert compare_manifests(old, new) == ([], [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert describe_module(MSELoss()) == describe_module(MeasurementLoss())  # the same class, recorded alike
    other = {"module": {"losses": {"mse": {"class": "ilo_pl.losses.base.GeodesicLoss"}}}}
    assert compare_manifests(other, new)[0]  # a real difference is still refused


@pytest.mark.parametrize("old_path", ["ilo_pl.losses.MSELoss", "ilo_pl.losses.base.MSELoss"])
def test_a_config_that_names_the_old_loss_class_resumes(old_path, tmp_path):
    """A run folder's config.yaml written with ``MSELoss`` resumes with the shipped configs' ``MeasurementLoss``."""
    from ilo_pl.cli import check_resume_config

    def config(cls: str) -> str:
        return f"model:\n  losses:\n    mse: {{class_path: {cls}}}\ndata: {{seed: 0}}\n"

    old = tmp_path / "config.yaml"
    old.write_text(config(old_path))
    check_resume_config(old, config(old_path.replace("MSELoss", "MeasurementLoss")))  # no error
    with pytest.raises(ValueError, match="GeodesicLoss"):
        check_resume_config(old, config("ilo_pl.losses.base.GeodesicLoss"))


def test_run_dir_that_ilo_pl_did_not_make_is_refused_and_left_untouched(tmp_path):
    """A user's folder given as --output.run_dir: no file of theirs is overwritten or deleted."""
    from ilo_pl.callbacks.writer import RUN_MARKER

    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"results.csv": b"my,own\n1,2\n", "x.draft.tmp": b"draft", "results.rank0.csv": b"keep"}
    for name, data in files.items():
        (mine / name).write_bytes(data)
    gen, op, y, stages = _tiny_problem()
    with pytest.raises(FileExistsError, match=r"is not an ilo-pl run folder \(it has no \.ilo-pl-run\).*new or empty folder"):
        solve(gen, op, y, stages, callbacks=[ResultWriter(run_dir=mine)], trainer_kwargs={"accelerator": "cpu"})
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == files
    # A folder an ilo-pl from before the marker made (it has a run manifest) is still taken, and marked.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "run_manifest.json").write_text("{}")
    assert ResultWriter(run_dir=legacy).open_run_dir() == legacy and (legacy / RUN_MARKER).is_file()


def test_resume_refuses_a_config_yaml_that_is_not_a_config(tmp_path):
    from ilo_pl.cli import check_resume_config

    (tmp_path / "config.yaml").write_text("just some notes, not YAML: [\n")
    with pytest.raises(ValueError, match=r"its config.yaml is not an ilo-pl config.*new run folder"):
        check_resume_config(tmp_path / "config.yaml", "model: {}\n")
    (tmp_path / "config.yaml").write_text("plain text\n")
    with pytest.raises(ValueError, match=r"its config.yaml is not an ilo-pl config"):
        check_resume_config(tmp_path / "config.yaml", "model: {}\n")
