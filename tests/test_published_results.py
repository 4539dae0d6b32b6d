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
