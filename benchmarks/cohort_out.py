"""The leave-one-cohort-out section of the benchmark report: per model and left-out cohort, the test numbers of a
model trained on every other cohort beside the same subjects' numbers in the folds, with paired t-tests."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medsynth_app.folds import Folds
from medsynth_app.metrics import paired_ttest
from medsynth_app.task import Task

from .plan import Entry
from .runner import cohort_out_name


def collect_cohort_out(out: Path, task: Task, entry: Entry, folds: Folds) -> dict[str, dict]:
    """left-out cohort -> its run file, for the cohorts of ``folds`` that have one."""
    base = Path(out) / "runs" / task.slug / entry.slug
    return {c: json.loads(p.read_text()) for c in folds.left_out_cohorts
            if (p := base / f"{cohort_out_name(c)}.json").exists()}


def _mean(rows: list[dict], metric: str, digits: int, statistic=np.mean) -> str:
    values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    return f"{statistic(values):.{digits}f}" if values else "not measured"


def _paired(left: dict[str, dict], right: dict[str, dict], metric: str, digits: int) -> str:
    common = sorted(i for i in set(left) & set(right) if metric in left[i] and metric in right[i])
    if len(common) < 2:
        return "–"
    test = paired_ttest([left[i][metric] for i in common], [right[i][metric] for i in common])
    mark = "**" if test["p"] < 0.05 else ""
    return f"{mark}{test['mean_difference']:+.{digits}f}{mark} (p={test['p']:.2g}, n={test['n']})"


def cohort_out_lines(out: Path, task: Task, entries: list[Entry], folds: Folds, results: dict[str, dict]) -> list[str]:
    """The section's table (empty when no model of ``task`` has a left-out cohort run); ``results``: the fold
    results of the report (`report.collect`), whose rows give each subject's fold number."""
    lines = []
    for entry in entries:
        runs = collect_cohort_out(out, task, entry, folds)
        in_folds = {r["id"]: r for r in results.get(entry.name, {}).get("rows", [])}
        for cohort, run in runs.items():
            rows = [r for r in run["subjects"] if "error" not in r]
            left_out = {r["id"]: r for r in rows}
            fold_rows = [in_folds[i] for i in left_out if i in in_folds]
            lines.append(
                f"| {entry.name} | {cohort} | {len(rows)} | {len(run['train_subjects'])} | "
                f"{_mean(rows, 'lesion_conspicuity_kept', 2, np.median)} / "
                f"{_mean(fold_rows, 'lesion_conspicuity_kept', 2, np.median)} | "
                f"{_mean(rows, 'lesion_detection_dice', 2)} / {_mean(fold_rows, 'lesion_detection_dice', 2)} | "
                f"{_mean(rows, 'psnr', 2)} / {_mean(rows, 'ssim', 3)} | "
                f"{_mean(fold_rows, 'psnr', 2)} / {_mean(fold_rows, 'ssim', 3)} | "
                f"{_paired(left_out, in_folds, 'psnr', 2)} | {_paired(left_out, in_folds, 'ssim', 3)} |")
    if not lines:
        return []
    return ["| model | left-out cohort | n | trained on | conspicuity kept (median) left out / folds | "
            "detection Dice left out / folds | PSNR / SSIM left out | PSNR / SSIM in the folds | "
            "ΔPSNR left out - folds | ΔSSIM left out - folds |", "|" + "---|" * 10, *lines]


LEGEND = ("Leave-one-cohort-out (`python -m benchmarks --protocol cohort-out`): each model trained on every other "
          "cohort of the folds (a patient present in two cohorts is never trained on when tested), tested on the "
          "left-out one; beside it the same subjects' numbers as test subjects of the folds. Δ: paired t-test over "
          "the subjects scored under both, bold where p < 0.05.")
