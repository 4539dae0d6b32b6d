"""The ilo-pl command: configs, overrides, outputs, never overwriting a run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ilo_pl.cli import ILOCLI
from ilo_pl.io import to_uint8
from ilo_pl.solutions import load_generator, load_solution, regenerate

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["inpainting_box", "inpainting_random", "denoising", "superres", "compressed_sensing", "classifier_guidance"]


def _tiny_config(tmp_path: Path, task: str, steps: int = 2) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / f"{task}.yaml").read_text())
    for st in cfg["model"]["stages"]:
        st["steps"] = steps
    cfg["output"] = {"output_dir": str(tmp_path / "runs")}
    if isinstance(cfg["data"].get("data"), dict):  # generator-drawn problems: keep it small
        cfg["data"]["data"]["init_args"]["num"] = 1
    cfg["data"]["limit"] = 1
    cfg["data"]["batch_size"] = 1
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(args, monkeypatch) -> None:
    ILOCLI(args=args)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_config_runs_end_to_end(task, tmp_path, monkeypatch):
    cfg = _tiny_config(tmp_path, task)
    _run(["fit", "--config", str(cfg), "--trainer.enable_progress_bar", "false"], monkeypatch)
    run = tmp_path / "runs" / "run_000"
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert len(rows) == 1 and rows[0]["failed"] == ""
    pid = rows[0]["id"]
    # Classifier guidance has no ground truth: it shows its start image instead.
    judged_by = "start.png" if task == "classifier_guidance" else "target.png"
    for suffix in ("reconstruction.png", "grid.png", "solution.pt", judged_by):
        assert (run / f"{pid}_{suffix}").is_file(), suffix
    assert (run / "config.yaml").is_file()
    # The CSV's loss is the saved solution's: rebuild the problem from the config, render
    # the solution and measure it again.
    cli = ILOCLI(args=["--config", str(cfg)], run=False)
    generator = load_generator(run / "config.yaml")
    dm = cli.datamodule
    dm.bind(generator)
    batch = dm.make_batch([int(rows[0]["index"])])
    assert batch.ids == [pid]
    image = regenerate(run / f"{pid}_solution.pt", generator)
    with torch.no_grad():
        again = batch.operator.measurement_error(batch.operator.A(image), batch.observation)
    assert float(rows[0]["measurement_loss"]) == pytest.approx(float(again), rel=1e-5, abs=1e-8)


def test_outputs_are_linear_not_minmax_and_runs_never_overwrite(tmp_path, monkeypatch):
    cfg = _tiny_config(tmp_path, "inpainting_box")
    _run(["fit", "--config", str(cfg), "--trainer.enable_progress_bar", "false"], monkeypatch)
    _run(["fit", "--config", str(cfg), "--trainer.enable_progress_bar", "false"], monkeypatch)
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["run_000", "run_001"]
    run = tmp_path / "runs" / "run_000"
    pid = next(csv.DictReader(open(run / "results.csv")))["id"]
    sol = load_solution(run / f"{pid}_solution.pt")
    png = np.asarray(Image.open(run / f"{pid}_reconstruction.png"))
    assert np.array_equal(png, to_uint8(sol["image"][0]))
    # a linear map of [-1, 1]: an image not spanning the full range does not reach 0 and 255
    img = torch.full((3, 4, 4), 0.5)
    img[0, 0, 0] = -0.5
    out = to_uint8(img)
    assert out.max() == round(1.5 * 127.5) and out.min() == round(0.5 * 127.5)


def test_layered_configs_and_overrides(tmp_path, monkeypatch, capsys):
    cfg = _tiny_config(tmp_path, "inpainting_box")
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"data": {"seed": 7}}))
    with pytest.raises(SystemExit):
        ILOCLI(args=["fit", "--config", str(cfg), "--config", str(extra), "--data.batch_size", "3", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["seed"] == 7 and printed["data"]["batch_size"] == 3
    assert printed["model"]["stages"][0]["steps"] == 2


def test_optimizer_entry_is_refused(tmp_path, monkeypatch, capsys):
    cfg = _tiny_config(tmp_path, "inpainting_box")
    with pytest.raises(SystemExit):
        ILOCLI(args=["fit", "--config", str(cfg), "--optimizer", "torch.optim.SGD"])
    assert "optimizer" in capsys.readouterr().err


def test_outputs_are_readable_by_others_and_same_stems_do_not_collide(tmp_path):
    import os

    from ilo_pl.data import ImageFolder
    from ilo_pl.io import atomic_write_bytes

    atomic_write_bytes(tmp_path / "f.txt", b"x")
    assert (os.stat(tmp_path / "f.txt").st_mode & 0o777) == (0o666 & ~_umask())
    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    img.save(tmp_path / "a.png")
    img.save(tmp_path / "a.bmp")
    img.save(tmp_path / "b.png")
    src = ImageFolder(tmp_path)
    names = [src.name(i) for i in range(len(src))]
    assert names == ["a_bmp", "a_png", "b"]
    img.save(tmp_path / "a_png.jpg")  # its stem is another file's id: it takes its whole name
    src = ImageFolder(tmp_path)
    assert [src.name(i) for i in range(len(src))] == ["a_bmp", "a_png", "a_png_jpg", "b"]


def _umask() -> int:
    import os

    m = os.umask(0)
    os.umask(m)
    return m


def test_cli_shows_ilo_pl_info_messages_once(capsys):
    """Notes such as 'resuming ...' or the one-time kernel build reach the terminal, once each."""
    import logging

    from ilo_pl.cli import show_info_messages

    log = logging.getLogger("ilo_pl")
    saved = (list(log.handlers), log.level)
    try:
        show_info_messages()
        show_info_messages()  # idempotent: one handler
        logging.getLogger("ilo_pl.resume").info("resuming %s", "runs/run_003")
        err = capsys.readouterr().err
        assert err.count("ilo-pl: resuming runs/run_003") == 1
    finally:
        log.handlers[:] = saved[0]
        log.setLevel(saved[1])


# -- indexed overrides, failed runs, a quiet command line (issue 19) ----------------------------
def test_docstring_override_sets_one_stage(capsys):
    """The override the command's docs show (``--model.stages.0.steps 100``) sets that entry only."""
    import re

    import ilo_pl.cli

    example = re.search(r"--model\.stages\.0\.steps \d+", ilo_pl.cli.__doc__).group(0).split()
    box = str(ROOT / "configs" / "inpainting_box.yaml")
    with pytest.raises(SystemExit):
        ILOCLI(args=["fit", "--config", box, *example, "--model.stages.2.radius.state=7", "--model.stages.1.lr",
                     "1e-3", "--print_config"])
    stages = yaml.safe_load(capsys.readouterr().out)["model"]["stages"]
    configured = yaml.safe_load(open(box))["model"]["stages"]
    assert stages[0]["steps"] == int(example[1])
    assert stages[1]["lr"] == 1e-3 and stages[2]["radius"] == {"state": 7.0}
    assert [s["split"] for s in stages] == [s["split"] for s in configured]
    assert [s["steps"] for s in stages[1:]] == [s["steps"] for s in configured[1:]]
    with pytest.raises(SystemExit):
        ILOCLI(args=["fit", "--config", box, "--model.stages.9.steps", "3"])
    assert "model.stages has 5 entries (0 to 4); no entry 9" in capsys.readouterr().err


def test_failed_run_leaves_no_run_folder(tmp_path, capsys):
    from ilo_pl.cli import main

    cfg = _tiny_config(tmp_path, "inpainting_box")
    (tmp_path / "no_faces").mkdir()  # exists (the command's precheck passes), holds no image: setup fails
    missing = ["--data.data", str(tmp_path / "no_faces")]
    with pytest.raises(ValueError, match="no usable image"):
        main(["fit", "--config", str(cfg), *missing])
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
    with pytest.raises(ValueError, match="no usable image"):
        main(["fit", "--config", str(cfg), *missing, "--output.run_dir", str(tmp_path / "mine")])
    assert not (tmp_path / "mine").exists()
    (tmp_path / "empty").mkdir()  # the user's empty folder: emptied again, kept
    with pytest.raises(ValueError, match="no usable image"):
        main(["fit", "--config", str(cfg), *missing, "--output.run_dir", str(tmp_path / "empty")])
    assert list((tmp_path / "empty").iterdir()) == []
    assert "the run failed before solving a problem" in capsys.readouterr().err


def test_failed_resume_keeps_the_run_folder(tmp_path):
    from ilo_pl.cli import main

    cfg = _tiny_config(tmp_path, "inpainting_box", steps=1)
    run = tmp_path / "run"
    main(["fit", "--config", str(cfg), "--output.run_dir", str(run), "--trainer.enable_progress_bar", "false"])
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert "results.csv" in before
    with pytest.raises(ValueError, match="cannot resume"):
        main(["fit", "--config", str(cfg), "--output.run_dir", str(run), "--data.seed", "5"])
    with pytest.raises(ValueError, match="precision"):  # refused inside trainer.fit (run_manifest.json)
        main(["fit", "--config", str(cfg), "--output.run_dir", str(run), "--trainer.precision", "bf16-mixed"])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_quick_fit_on_the_command_line_prints_only_ilo_pl_lines(tmp_path):
    """No Lightning advertisement, seed, device inventory or third-party warning on stderr."""
    import os
    import subprocess
    import sys

    from ilo_pl.cli import LIGHTNING_NOTICES

    box = ROOT / "configs" / "inpainting_box.yaml"
    n = len(yaml.safe_load(box.read_text())["model"]["stages"])
    steps = [a for i in range(n) for a in (f"--model.stages.{i}.steps", "1")]
    cmd = [sys.executable, "-m", "ilo_pl.cli", "fit", "--config", str(box), *steps, "--data.limit", "1",
           "--data.batch_size", "1", "--output.output_dir", str(tmp_path / "runs"),
           "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    for notice in LIGHTNING_NOTICES + ("litlogger", "seed set to"):
        assert not [line for line in lines if notice in line], notice
    # ilo-pl's own lines, or an ilo-pl warning (its source line is indented below it)
    foreign = [line for line in lines if not line.startswith(("ilo-pl: ", "  ")) and "/ilo_pl/" not in line]
    assert foreign == [], proc.stderr
    assert any(line.startswith("ilo-pl: writing results to") for line in lines)
    written = yaml.safe_load((tmp_path / "runs" / "run_000" / "config.yaml").read_text())
    assert [s["steps"] for s in written["model"]["stages"]] == [1] * n


def test_a_step_capped_run_says_so_and_is_not_resumed_uncapped(tmp_path, monkeypatch):
    """ILO_PL_MAX_STEPS is written into config.yaml (a comment) and run_manifest.json; resuming uncapped names it."""
    import json

    from ilo_pl.cli import main

    cfg = _tiny_config(tmp_path, "inpainting_box", steps=3)
    run = tmp_path / "run"
    monkeypatch.setenv("ILO_PL_MAX_STEPS", "1")
    main(["fit", "--config", str(cfg), "--output.run_dir", str(run), "--trainer.enable_progress_bar", "false"])
    assert (run / "config.yaml").read_text().startswith("# ILO_PL_MAX_STEPS=1 capped every stage at 1 steps")
    assert json.loads((run / "run_manifest.json").read_text())["settings"]["ILO_PL_MAX_STEPS"] == 1
    monkeypatch.delenv("ILO_PL_MAX_STEPS")
    with pytest.raises(ValueError, match=r"environment variable ILO_PL_MAX_STEPS .*: 1 -> \(unset\)"):
        main(["fit", "--config", str(cfg), "--output.run_dir", str(run)])
