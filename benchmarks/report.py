"""The benchmark report: markdown tables (docs/benchmarks.md) with their summary JSON beside it (docs/benchmarks.json),
figures, and the README's short table, all derived from the per-fold result files of `runner` and nothing else. The
README is never rewritten: its table is checked against `readme_table` by the tests."""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from medsynth_app.folds import Folds
from medsynth_app.metrics import paired_ttest, summarise
from .figures import box_plots, montage
from .cohort_out import LEGEND as COHORT_OUT_LEGEND, cohort_out_lines
from .lesions import LEGEND, lesion_table
from medsynth_app.task import Task, join

from .plan import Comparison, Entry

# The README's short table: the forest, the served default and the best entry of each other deep family, as
# (benchmark entry, what the README calls it).
README_ROWS = (("replica", "forest (REPLICA-style), the baseline"),
               ("multimodal-3view-balanced", "multimodal, the served default ¹"),
               ("synnet-long", "synnet"),
               ("cae3d-xlong-ssim0.05-precise-bn", "cae3d"))
README_TASKS = ("T1+T2->FLAIR", "T1->T2")


def collect(out: Path, task: Task, entry: Entry, folds: Folds) -> dict | None:
    """Everything measured for one model on one task, or None when no fold has finished."""
    base = Path(out) / "runs" / task.slug / entry.slug
    runs = {f: json.loads((base / f"fold{f}.json").read_text()) for f in folds.folds if (base / f"fold{f}.json").exists()}
    if not runs:
        return None
    rows = [r for run in runs.values() for r in run["subjects"] if "error" not in r]
    subsets = {name: [r for run in runs.values() for r in run.get("subsets", {}).get(name, []) if "error" not in r]
               for name in dict.fromkeys(n for run in runs.values() for n in run.get("subsets", {}))}
    timing = json.loads((base / "timing.json").read_text()) if (base / "timing.json").exists() else None
    cohorts = sorted({r["cohort"] for r in rows})
    return {"model": entry.name, "family": entry.family, "epochs": entry.epochs, "lr": entry.lr,
            "hparams": entry.hparams, "folds": sorted(runs), "complete": len(runs) == len(folds.folds), "rows": rows,
            "subsets": subsets,
            "errors": [r for run in runs.values() for r in run["subjects"] if "error" in r],
            "summary": {"pooled": summarise(rows), **{c: summarise([r for r in rows if r["cohort"] == c])
                                                      for c in cohorts}},
            "train_seconds": [runs[f]["train_seconds"] for f in sorted(runs)],
            "training": {f: runs[f]["training"] for f in sorted(runs)},
            "devices": sorted({run["device"] for run in runs.values()} | ({timing["device"]} if timing else set())),
            "finished": max(run.get("finished", "") for run in runs.values()),
            "timing": timing}


def paired_values(a: dict, b: dict, metric: str) -> tuple[list[float], list[float]]:
    """``metric`` of two models over the test subjects both were scored on, in the same order."""
    left = {r["id"]: r[metric] for r in a["rows"] if metric in r}
    right = {r["id"]: r[metric] for r in b["rows"] if metric in r}
    common = sorted(set(left) & set(right))
    return [left[i] for i in common], [right[i] for i in common]


def compare(a: dict, b: dict, metric: str) -> dict | None:
    """Paired t-test of ``metric`` between two models over the test subjects both were scored on."""
    left, right = paired_values(a, b, metric)
    return paired_ttest(left, right) if len(left) >= 2 else None


def best_baseline(results: dict[str, dict], baselines: tuple[str, ...]) -> str | None:
    """The complete baseline (by family) with the highest pooled mean PSNR."""
    done = [r for r in results.values() if r["family"] in baselines and r["complete"]]
    return max(done, key=lambda r: r["summary"]["pooled"]["psnr"]["mean"])["model"] if done else None


def _ms(summary: dict, metric: str, digits: int) -> str:
    if metric not in summary:
        return "–"
    return f"{summary[metric]['mean']:.{digits}f} ± {summary[metric]['sd']:.{digits}f}"


def _pair(summary: dict | None, digits=(2, 3), prefix="") -> str:
    if not summary or f"{prefix}psnr" not in summary:
        return "–"
    return f"{summary[prefix + 'psnr']['mean']:.{digits[0]}f} / {summary[prefix + 'ssim']['mean']:.{digits[1]}f}"


def _delta(test: dict | None, digits: int) -> str:
    if test is None:
        return "–"
    mark = "**" if test["p"] < 0.05 else ""
    return f"{mark}{test['mean_difference']:+.{digits}f}{mark} (p={test['p']:.2g})"


def _partial(result: dict, with_n: bool = True) -> str:
    """" (2 folds, n=13)" for a model that has not finished every fold, "" for one that has."""
    if result["complete"]:
        return ""
    folds = len(result["folds"])
    n = f", n={_n(result['summary']['pooled'])}" if with_n else ""
    return f" ({folds} fold{'s' if folds > 1 else ''}{n})"


def _n(summary: dict) -> int:
    return summary["psnr"]["n"] if "psnr" in summary else 0


def task_table(results: dict[str, dict], baseline: str | None, cohorts: list[str]) -> list[str]:
    head = ["model", "n", "PSNR (dB)", "SSIM", "SNR (dB)", "MAE", *[f"{c} PSNR / SSIM" for c in cohorts]]
    if baseline:
        head += [f"ΔPSNR vs {baseline}", f"ΔSSIM vs {baseline}"]
    head += ["lesion PSNR / SSIM", "s / volume", "peak MB", "train min / fold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        pooled = r["summary"]["pooled"]
        cells = [f"{name}{_partial(r, with_n=False)}", str(_n(pooled)), _ms(pooled, "psnr", 2), _ms(pooled, "ssim", 3),
                 _ms(pooled, "snr", 2), _ms(pooled, "mae", 3), *[_pair(r["summary"].get(c)) for c in cohorts]]
        if baseline:
            other = results[baseline]
            cells += ["–", "–"] if name == baseline else [_delta(compare(r, other, "psnr"), 2),
                                                          _delta(compare(r, other, "ssim"), 3)]
        timing = r["timing"]
        cells += [_pair(pooled, prefix="lesion_"),
                  (f"{timing['median_seconds']:.1f}" + (f" (n={timing['repeats']})" if timing["repeats"] != 5 else ""))
                  if timing else "–",
                  f"{timing['peak_memory_mb']:.0f}" if timing else "–",
                  f"{np.mean(r['train_seconds']) / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def data_set(subject_id: str) -> str:
    """The data set of a test subject: its study id without the last folder (open_ms_data/longitudinal/patient01_study1
    -> open_ms_data/longitudinal)."""
    return subject_id.rsplit("/", 1)[0] if "/" in subject_id else "."


def data_set_table(results: dict[str, dict], baseline: str) -> list[str]:
    """Per model and data set, the mean over the set's test subjects of the model's PSNR / SSIM minus the baseline's
    on the same subject; empty when the test subjects come from one data set (the pooled Δ says it all). Cohorts can
    mix conventions (the MS cohort holds skull-stripped and whole-head scans), which a cohort mean hides."""
    base = {r["id"]: r for r in results[baseline]["rows"]}
    counts = Counter(data_set(i) for i in base)
    if len(counts) < 2:
        return []
    sets = sorted(counts)
    lines = ["| model | " + " | ".join(f"{s} (n={counts[s]})" for s in sets) + " |", "|" + "---|" * (len(sets) + 1)]
    for name, r in results.items():
        if name == baseline:
            continue
        differences = defaultdict(list)
        for row in r["rows"]:
            if row["id"] in base:
                other = base[row["id"]]
                differences[data_set(row["id"])].append((row["psnr"] - other["psnr"], row["ssim"] - other["ssim"]))
        cells = []
        for s in sets:
            if not differences[s]:
                cells.append("–")
                continue
            psnr, ssim = np.mean(differences[s], axis=0)
            n = len(differences[s])
            cells.append(f"{psnr:+.2f} / {ssim:+.3f}" + (f" (n={n})" if n != counts[s] else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def shrink_rows(results: dict[str, dict]) -> list[str]:
    """ShrinkConnect per network: sizes before and after, multiply-adds, errors and forward speed-up (mean of folds)."""
    lines = []
    for name, r in results.items():
        reports = [t["shrink_connect"] for training in r["training"].values()
                   for t in training.get("targets", {}).values() if "shrink_connect" in t]
        if not reports:
            continue
        sizes = sorted({(tuple(s["sizes_before"]), tuple(s["sizes_after"])) for s in reports})
        mean = lambda key: float(np.mean([s[key] for s in reports]))  # noqa: E731
        lines.append(f"| {name} | " + "; ".join(f"{list(a)} → {list(b)}" for a, b in sizes)
                     + f" | {mean('multiply_adds_before'):.0f} → {mean('multiply_adds_after'):.0f} | "
                     f"{mean('error_before'):.5f} / {mean('error_after_shrink'):.5f} / "
                     f"{mean('error_after_retraining'):.5f} | {mean('forward_speedup'):.2f}x | {len(reports)} |")
    if not lines:
        return []
    return ["| network | sizes before → after | multiply-adds per voxel | training error before / shrunk / "
            "retrained | forward speed-up | folds |", "|---|---|---|---|---|---|", *lines]


def subset_lines(task: Task, result: dict, dedicated: dict[str, dict | None]) -> list[str]:
    """One model trained on all of the task's inputs, tested with each subset of them: against itself with every
    input (paired t-test), and against the same entry trained for that subset alone (``dedicated``: subset name ->
    its result on the task SUBSET->TARGET, when the benchmark ran it; the paper's Experiment A vs B)."""
    if not result["subsets"]:
        return []
    full = {"rows": result["rows"]}
    lines = [f"| inputs at test time | n | PSNR (dB) | SSIM | ΔPSNR vs {join(task.inputs)} | "
             f"ΔSSIM vs {join(task.inputs)} | trained for the subset: PSNR / SSIM | ΔPSNR / ΔSSIM vs it |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in result["subsets"].items():
        summary, this = summarise(rows), {"rows": rows}
        other = dedicated.get(name)
        against = "not run | –" if not other else (
            f"{_pair(other['summary']['pooled'])}{_partial(other)} | "
            f"{_delta(compare(this, other, 'psnr'), 2)} / {_delta(compare(this, other, 'ssim'), 3)}")
        lines.append(f"| {name} | {_n(summary)} | {_ms(summary, 'psnr', 2)} | "
                     f"{_ms(summary, 'ssim', 3)} | {_delta(compare(this, full, 'psnr'), 2)} | "
                     f"{_delta(compare(this, full, 'ssim'), 3)} | {against} |")
    return lines


UNITS = {"psnr": " dB", "snr": " dB"}


def comparison_lines(results: dict[str, dict], comparison: Comparison) -> list[str]:
    """One line per pair of ``comparison`` and metric: the claim first > second, checked with a paired t-test over
    the test subjects both models were scored on, with their means over those subjects. A pair in which a model has
    not finished every fold names the folds the two share."""
    lines = []
    for better, worse in comparison.pairs:
        a, b = results.get(better), results.get(worse)
        if not (a and b):
            continue
        shared = sorted(set(a["folds"]) & set(b["folds"]))
        scope = "" if a["complete"] and b["complete"] else \
            f" (fold{'s' if len(shared) > 1 else ''} {', '.join(map(str, shared))} only)"
        for metric in comparison.metrics:
            left, right = paired_values(a, b, metric)
            if len(left) < 2:
                continue
            test = paired_ttest(left, right)
            unit, digits = UNITS.get(metric, ""), 2 if metric in UNITS else 3
            verdict = "holds" if test["mean_difference"] > 0 else "does not hold"
            significance = "significant" if test["p"] < 0.05 else "not significant"
            lines.append(f"- {metric.upper()} {better} {np.mean(left):.{digits}f}{unit} vs {worse} "
                         f"{np.mean(right):.{digits}f}{unit}{scope}: {verdict} (difference "
                         f"{test['mean_difference']:+.{digits}f}{unit}, p = {test['p']:.2g}, {significance}, "
                         f"n = {test['n']}).")
    return lines


def write_report(out: Path, tasks: list[Task], entries: list[Entry], baselines: tuple[str, ...], folds: Folds,
                 report: Path, comparisons: tuple[Comparison, ...] = ()) -> dict:
    """Write ``report`` (markdown), its summary JSON beside it and the figures; returns the summary."""
    text, summary = render_report(out, tasks, entries, baselines, folds, report, comparisons, draw=True)
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text, encoding="utf-8")
    # beside the report it describes: a run of a few tasks or models reporting elsewhere leaves the full summary alone
    report.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    return summary


def render_report(out: Path, tasks: list[Task], entries: list[Entry], baselines: tuple[str, ...], folds: Folds,
                  report: Path, comparisons: tuple[Comparison, ...] = (), draw: bool = False) -> tuple[str, dict]:
    """(markdown text of the report at ``report``, summary) from the result files under ``out``. ``draw``: also draw
    the figures it links (else it links those already there)."""
    report = Path(report)
    figures_dir = report.parent / "figures" / "benchmark"
    summary: dict = {"tasks": {}}
    finished: list[str] = []
    body: list[str] = []
    devices: set[str] = set()
    for task in tasks:
        results = {e.name: r for e in entries if (r := collect(out, task, e, folds)) is not None}
        if not results:
            continue
        finished += [r["finished"] for r in results.values()]
        devices |= {d for r in results.values() for d in r["devices"]}
        baseline = best_baseline(results, baselines)
        cohorts = sorted({c for r in results.values() for c in r["summary"] if c != "pooled"})
        summary["tasks"][task.name] = {"best_baseline": baseline, "models": {
            name: {k: v for k, v in r.items() if k not in ("rows", "training", "subsets")}
            for name, r in results.items()}}
        body += [f"## {task.name}", ""]
        lesions = lesion_table(results)
        if lesions:
            body += [*lesions, "", LEGEND, ""]
        body += task_table(results, baseline, cohorts)
        retimed = [f"{name} ({r['timing']['weights']})" for name, r in results.items()
                   if r["timing"] and "weights" in r["timing"]]
        loads = [f"{name} {r['timing']['load_average_1min']:.1f} on {r['timing']['cores']} cores"
                 for name, r in results.items() if r["timing"] and "load_average_1min" in r["timing"]]
        body += ["", f"Mean ± sd over test subjects (pooled n per row); cohort columns give mean PSNR / SSIM. Δ: "
                 f"paired t-test against the best complete baseline ({baseline or 'none yet'}), bold where p < 0.05."
                 " s / volume: end to end (read, preprocess, predict, write) on the largest fold-1 test volume, "
                 "median of 5 runs unless n says otherwise; peak MB: resident memory of that process. train min / fold: wall "
                 "minutes of training, longer when other runs shared the CPU (several often did); a fold interrupted and "
                 "resumed adds the training minutes of its epochs before the interruption (validation not counted)."
                 + (" Load average (1 min) at the end of each timing (above the core count, other processes "
                    f"competed for the CPU and the seconds are pessimistic): {', '.join(loads)}."
                    if loads else "")
                 + (" Timed with another checkpoint of the same network instead of the fold-1 weights: "
                    f"{', '.join(retimed)}." if retimed else ""), ""]
        by_set = data_set_table(results, baseline) if baseline else []
        if by_set:
            body += [f"Difference to {baseline} by data set (mean over the set's test subjects of the model's PSNR in dB "
                     f"/ SSIM minus {baseline}'s on the same subject):", "", *by_set, ""]
        stem = task.slug
        slices = Path(out) / "slices" / task.slug
        # The slices behind a montage are data and stay out of the repository: unless this folder holds them for
        # every model with results, the figure made when the folds ran is kept (its column titles name its models).
        kept = figures_dir / f"{stem}_montage.png"
        shown = [e for e in entries if e.name in results]
        if draw:
            figures_dir.mkdir(parents=True, exist_ok=True)
            made = kept if kept.exists() and not all((slices / e.slug).is_dir() for e in shown) else \
                montage(task, slices, shown, kept)
            box_plots(task, results, figures_dir / f"{stem}_boxplots.png")
        else:
            made = kept if kept.exists() else None
        relative = lambda p: os.path.relpath(p, report.parent)  # noqa: E731
        if made:
            body += [f"![{task.name}: inputs, acquired target, the models whose slices it was drawn from, absolute "
                     f"errors]({relative(made)})", ""]
        body += [f"![{task.name}: PSNR and SSIM per test subject]({relative(figures_dir / f'{stem}_boxplots.png')})",
                 ""]
        left_out = cohort_out_lines(out, task, entries, folds, results)
        if left_out:
            body += ["Left-out cohorts:", "", *left_out, "", COHORT_OUT_LEGEND, ""]
        shrink = shrink_rows(results)
        if shrink:
            body += ["ShrinkConnect (eqs. 9-12):", "", *shrink, ""]
        for entry in entries:
            if entry.name in results:
                dedicated = {join(subset): collect(out, Task(subset, task.target), entry, folds)
                             for subset in task.input_subsets()}
                lines = subset_lines(task, results[entry.name], dedicated)
                if lines:
                    body += [f"{entry.name} trained on {join(task.inputs)}, tested with missing inputs (each "
                             "subset scored in its own brain mask, as its own task):", "", *lines, "",
                             "Δ: paired t-tests over the test subjects both sides were scored on (the folds a "
                             "partial run finished).", ""]
        for comparison in comparisons:
            lines = comparison_lines(results, comparison)
            if lines:
                body += [f"{comparison.title}:", "", *lines, ""]
        missing = [e.name for e in entries if e.name not in results]
        if missing:
            body += [f"Not run for this task yet: {', '.join(missing)}.", ""]
    summary["generated"] = max(finished, default="")[:10]
    header = ["# Benchmarks", "",
              f"Generated by `python -m benchmarks` (`make benchmark`) from the per-fold result files, the last of "
              f"them finished on {summary['generated'] or '–'}; do not edit by hand. Protocol: the three subject-wise "
              "folds, metrics and brain masks of EVALUATION.md (normalised volumes, brain mask). Every number is a "
              "test number: each fold's model never saw its test subjects. Left-out cohorts "
              "(`python -m benchmarks --protocol cohort-out`, or `both`): for each cohort of the folds file's "
              "`left_out_cohorts` that has the task's contrasts, the model trained on every other cohort (never on a "
              "patient of the left-out one seen in another cohort, `same_patients`) is tested on it; its run files "
              "(`cohort-out-<cohort>.json`) lie beside the fold ones and its table, with paired t-tests against the "
              "same subjects' fold numbers, follows each task's fold tables (\"Left-out cohorts\").",
              "", f"Devices (each result file names its own): {'; '.join(sorted(devices)) or 'none'}. "
              "Schedules (epochs, samples) are those of the benchmark plan `benchmarks/plan.json`, sized "
              "for a 2-core CPU; GPU numbers appear here only when the benchmark was run on a GPU.", ""]
    return "\n".join(header + body).rstrip() + "\n", summary


def readme_table(summary: dict) -> list[str]:
    """The README's short table: pooled PSNR / SSIM on the folds of each README_ROWS entry for README_TASKS, and on
    left-out cohorts ("not yet measured" until the summary holds leave-one-cohort-out results)."""
    lines = ["| model | benchmark entry | " + " | ".join(f"{t} on the folds" for t in README_TASKS)
             + " | left-out cohorts |", "|---|---|" + "---|" * len(README_TASKS) + "---|"]
    for entry, label in README_ROWS:
        cells = []
        for task in README_TASKS:
            model = summary["tasks"].get(task, {}).get("models", {}).get(entry)
            cells.append(f"{_pair(model['summary']['pooled'])} (n={_n(model['summary']['pooled'])})"
                         + ("" if model["complete"] else f", {len(model['folds'])} of 3 folds")
                         if model else "not yet measured")
        held_out = summary.get("left_out_cohorts", {}).get(entry)
        lines.append(f"| {label} | `{entry}` | " + " | ".join(cells) + f" | {held_out or 'not yet measured'} |")
    return lines
