"""Docs that cannot drift: docs/benchmarks.md and the README's short table are rebuilt from the committed per-fold
result files (docs/benchmark_results/runs) and must match what is written."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.plan import Plan
from benchmarks.report import README_ROWS, readme_table, render_report
from medsynth_app.folds import Folds

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rebuilt():
    plan = Plan.load()
    return render_report(ROOT / "docs" / "benchmark_results", plan.tasks(None, secondary=True), list(plan.entries),
                         plan.baselines, Folds.load(), ROOT / "docs" / "benchmarks.md", plan.comparisons)


def test_the_benchmark_report_is_what_the_committed_run_files_give(rebuilt):
    text, _ = rebuilt
    assert (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8") == text, \
        "docs/benchmarks.md differs from the run files: rebuild it with `python -m benchmarks --report-only ...`"


def test_the_readme_table_is_what_the_committed_run_files_give(rebuilt):
    _, summary = rebuilt
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    table = readme_table(summary)
    start = readme.index(table[0]) if table[0] in readme else None
    assert start is not None, "the README lacks the benchmark table's header row"
    assert readme[start:start + len(table)] == table
    assert len(table) == 2 + len(README_ROWS) and all("–" not in row for row in table[2:])


def test_every_plan_entry_says_in_one_line_why_it_is_there():
    for entry in Plan.load().entries:
        assert entry.reason and "\n" not in entry.reason and len(entry.reason) <= 120, entry.name
