"""The research harness beside the product: every family trained and scored on the folds of EVALUATION.md, with a
report and figures. Not part of the installed package; run from the repository root as ``python -m benchmarks``
(``make benchmark``).

`plan` says what runs (benchmarks/plan.json), `runner` trains and scores one fold at a time and keeps every result as
a file (so a stopped run resumes), `timing` measures seconds per volume and peak memory in a fresh process, `report`
and `figures` turn the result files into docs/benchmarks.md, its PNGs and the README's short table (checked by the
tests, never written into the README).
"""
from __future__ import annotations

from pathlib import Path

from medsynth_app.folds import Folds
from medsynth_app.studies import find_studies

from .plan import Plan
from .report import write_report
from .runner import Benchmark


def run_benchmark(studies_dir: str, out: str | Path, *, tasks: list[str] | None = None, secondary: bool = False,
                  models: list[str] | None = None, plan_path: str | None = None, folds_path: str | None = None,
                  run_folds: list[str] | None = None, protocols: tuple[str, ...] = ("folds",),
                  device: str = "auto", timing_repeats: int = 5,
                  timing_weights: dict[str, str] | None = None, report: str | Path | None = None,
                  report_only: bool = False, progress: bool = True) -> dict:
    plan = Plan.load(plan_path)
    folds = Folds.load(folds_path)
    chosen_tasks = plan.tasks(tasks, secondary)
    entries = plan.select(models)
    out = Path(out)
    if not report_only:
        studies = find_studies(studies_dir)
        Benchmark(studies, folds, out, device, progress, timing_repeats, timing_weights).run(
            chosen_tasks, entries, run_folds, protocols)
    return write_report(out, chosen_tasks, entries, plan.baselines, folds, Path(report or out / "benchmarks.md"),
                        plan.comparisons)
