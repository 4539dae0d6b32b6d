"""What the README and the results folder publish is what the result CSVs say.

The README's quality table (between its ``quality-summary`` markers) and
``benchmarks/results/quality_table.md`` must be what :mod:`benchmarks.report`
makes from ``benchmarks/results/quality.csv`` today; ``tuning_plus_table.md``
what ``benchmarks/tune.py --plus --report-only`` makes from its CSV.
Regenerate them (``python -m benchmarks.quality --report-only``, ``python -m
benchmarks.tune --plus --report-only``) after a run, never edit them by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import report, tune
from benchmarks.common import read_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _between(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"README.md has no <!-- {name}:start/end --> markers"
    return m.group(1)


def test_readme_quality_table_is_the_csv_summary():
    rows = read_rows(RESULTS / "quality.csv")
    assert rows, "benchmarks/results/quality.csv is empty"
    published = _between((ROOT / "README.md").read_text(), "quality-summary")
    assert published.strip() == report.summary_table(rows).strip()


def test_quality_table_file_is_the_report_of_the_csv(tmp_path):
    csv_path = tmp_path / "quality.csv"
    csv_path.write_bytes((RESULTS / "quality.csv").read_bytes())
    written = report.write_report(csv_path, tmp_path)
    table = next(p for p in written if p.suffix == ".md")
    assert table.read_text() == (RESULTS / "quality_table.md").read_text()


@pytest.mark.parametrize("name", ["tuning_plus"])
def test_tuning_tables_are_the_reports_of_their_csvs(name):
    rows = read_rows(RESULTS / f"{name}.csv")
    assert rows
    assert (RESULTS / f"{name}_table.md").read_text() == tune.plus_report(rows) + "\n"


#: Tasks whose pick's phase-4 candidate (twice the averaged restarts) has not been run: about 6
#: minutes each on 2 cores, then the task's ILO+ rows of the quality grid again at twice the compute.
#: The tuning table says so under each; a task leaves this set when its row is in the CSV.
PHASE4_NOT_RUN = {"inpainting_box", "compressed_sensing"}


@pytest.mark.parametrize("task", list(tune.PLUS_LEVELS))
def test_each_ilo_plus_overlay_is_its_tasks_pick_in_tuning_plus_csv(task):
    """``configs/plus/<task>.yaml`` holds what ``tune.plus_pick`` picks from the published tuning rows of
    the task's current config: restarts, kept and averaged restarts, consistency, ST-LPIPS weight and
    the factor on the ILO stages' radii; the grid ran to its end, except where PHASE4_NOT_RUN says."""
    from benchmarks import quality

    base = quality.load_task_config(task, ROOT / "configs")
    plus = quality.load_task_config(task, ROOT / "configs", plus=True)
    rows = [r for r in read_rows(RESULTS / "tuning_plus.csv")
            if r["task"] == task and r["config"] == base.label and r["images"].endswith("faces/tune")]
    assert rows, f"no tuning_plus.csv rows of {base.label}: re-run python -m benchmarks.tune --plus --tasks {task}"
    values, phases = {}, {}
    for r in rows:
        values.setdefault(tune.candidate_from_row(r), {})[r["image"]] = float(r["true_mse"])
        phases[tune.candidate_from_row(r)] = int(r["phase"])
    pick = tune.plus_pick(values)
    pending = tune.pending_phase4(values, phases)
    assert (pending is not None) == (task in PHASE4_NOT_RUN), "update PHASE4_NOT_RUN"
    kw = plus.module_kwargs
    assert (kw.get("restarts", 1), kw.get("restart_keep"), kw.get("restart_average", 1), kw.get("consistency", "none")) \
        == (pick.restarts, pick.restart_keep, pick.restart_average, pick.consistency), pick.name
    assert (kw.get("loss_weights") or {}).get("stlpips", 0.0) == pick.stlpips
    factors = {round(a.radius[k] / b.radius[k], 9) for a, b in zip(plus.stages[1:], base.stages[1:]) for k in a.radius}
    assert factors == {pick.radius_scale}, pick.name
