"""Calibration of the uncertainty maps, measured on the evaluation folds and left-out cohorts (EVALUATION.md).

    python -m benchmarks.uncertainty_calibration --studies ../shared/data --tasks "T1+T2->FLAIR" --out flair.json
    python -m benchmarks.uncertainty_calibration --studies ../shared/data --splits cohorts --out flair.json ...
    python -m benchmarks.uncertainty_calibration --report --out flair.json,t2.json --figure docs/figures/x.png
    python -m benchmarks.uncertainty_calibration --fit apps/medsynth/model/replica_T1_to_T2.pt --studies ../shared/data

Measurement: per split, the default family is trained on the training subjects minus one validation subject per
cohort, its calibration fitted on those validation subjects, and its test subjects scored: Spearman correlation of the
uncertainty with |error| over brain voxels, mean |error| per uncertainty decile, predicted against measured mean
|error| per subject and inside lesions. ``--fit`` writes the calibration beside a trained checkpoint from the
validation subjects its training record names.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TASKS = {"T1+T2->FLAIR": (["T1", "T2"], "FLAIR"), "T1->T2": (["T1"], "T2")}
COHORTS = {"mni": "open_ms_data/mni/", "longitudinal": "open_ms_data/longitudinal/", "hinet": "hinet_brats2018_slices/"}
VOXELS_PER_SUBJECT = 100_000


def _cohort(study_id: str) -> str:
    return next((name for name, prefix in COHORTS.items() if study_id.startswith(prefix)), "other")


def _maps(model, study, inputs, target, normalisation="mean"):
    """(subject, spread, |error|) on the prepared grid of ``study``'s target."""
    from medsynth_app.pipeline import prepare_study
    from medsynth_app.uncertainty import prediction_and_spread

    subject = prepare_study(study, [*inputs, target], target, [*inputs, target], normalisation)
    prediction, spread = prediction_and_spread(model, subject, target)
    error = np.abs(np.clip(prediction, 0, None) - subject.images[target])
    return subject, spread, error


def fit_calibration(model, family, task, target, inputs, studies):
    from medsynth_app.uncertainty import Calibration

    spreads, errors = [], []
    for study in studies:
        subject, spread, error = _maps(model, study, inputs, target)
        spreads.append(spread[subject.mask])
        errors.append(error[subject.mask])
    return Calibration.fit(family, task, target, spreads, errors, [s.id for s in studies])


def score_split(model, calibration, inputs, target, tests, rng) -> list[dict]:
    from scipy.stats import spearmanr

    rows = []
    for study in tests:
        started = time.time()
        subject, spread, error = _maps(model, study, inputs, target)
        predicted = calibration.apply(spread)[subject.mask]
        measured = error[subject.mask]
        pick = rng.permutation(len(measured))[:VOXELS_PER_SUBJECT]
        row = {"id": study.id, "cohort": _cohort(study.id), "voxels": int(len(measured)),
               "spearman": float(spearmanr(predicted[pick], measured[pick]).statistic),
               "predicted_mae": float(predicted.mean()), "measured_mae": float(measured.mean()),
               "sample_predicted": predicted[pick].tolist(), "sample_error": measured[pick].tolist()}
        if subject.lesion is not None and (subject.lesion & subject.mask).any():
            inside = subject.lesion[subject.mask]
            row.update(lesion_predicted_mae=float(predicted[inside].mean()),
                       lesion_measured_mae=float(measured[inside].mean()))
        row["seconds"] = round(time.time() - started, 1)
        rows.append(row)
        print(f"  {study.id}: spearman {row['spearman']:.3f}, predicted {row['predicted_mae']:.4f}, "
              f"measured {row['measured_mae']:.4f} ({row['seconds']} s)", flush=True)
    return rows


def deciles(rows: list[dict]) -> list[dict]:
    predicted = np.concatenate([r["sample_predicted"] for r in rows])
    error = np.concatenate([r["sample_error"] for r in rows])
    edges = np.quantile(predicted, np.linspace(0, 1, 11))
    index = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, 9)
    return [{"decile": d + 1, "predicted": float(predicted[index == d].mean()),
             "measured": float(error[index == d].mean())} for d in range(10) if (index == d).any()]


def summary(rows: list[dict]) -> dict:
    table = deciles(rows)
    ratios = [r["predicted_mae"] / r["measured_mae"] for r in rows]
    return {"subjects": len(rows), "spearman_mean": float(np.mean([r["spearman"] for r in rows])),
            "top_to_bottom_decile": table[-1]["measured"] / table[0]["measured"],
            "within_25_percent": int(sum(abs(q - 1) <= 0.25 for q in ratios)), "deciles": table}


def splits(studies, inputs, target):
    """(name, training studies, validation studies, test studies) of the folds and left-out cohorts."""
    from medsynth_app.folds import Folds

    usable = [s for s in studies if s.has([*inputs, target])]
    folds = Folds.load()

    def carve(train):
        first = {}
        for s in train:
            first.setdefault(_cohort(s.id), s)
        validation = list(first.values())
        return [s for s in train if s not in validation], validation

    for fold in folds.folds:
        train, test = folds.split(usable, fold)
        yield (f"fold {fold}", *carve(train), test)
    for cohort, prefix in COHORTS.items():
        train = [s for s in usable if not s.id.startswith(prefix) and _cohort(s.id) != "other"]
        yield (f"without {cohort}", *carve(train), [s for s in usable if s.id.startswith(prefix)])


def measure(studies, tasks, family, out: Path, which: str) -> dict:
    from medsynth_app.models import TrainSettings
    from medsynth_app.pipeline import train

    results = json.loads(out.read_text()) if out.is_file() else {}
    rng = np.random.default_rng(0)
    for task in tasks:
        inputs, target = TASKS[task]
        for name, training, validation, test in splits(studies, inputs, target):
            if (which == "folds") != name.startswith("fold") or f"{task} {name}" in results:
                continue
            started = time.time()
            print(f"{task} {name}: training on {len(training)}, calibrating on {len(validation)}, "
                  f"testing on {len(test)}", flush=True)
            checkpoint = train(family, inputs, [target], training, settings=TrainSettings(progress=False))
            model = checkpoint.build()
            calibration = fit_calibration(model, family, task, target, inputs, validation)
            rows = score_split(model, calibration, inputs, target, test, rng)
            results[f"{task} {name}"] = {"task": task, "split": name, "family": family, "rows": rows,
                                         "calibrated_on": calibration.fitted_on,
                                         "seconds": round(time.time() - started, 1)}
            out.write_text(json.dumps(results))
    return results


def report(results: dict, figure: Path | None) -> str:
    lines = ["| task | splits | subjects | Spearman (mean) | top/bottom decile |error| | predicted within 25% |",
             "|---|---|---:|---:|---:|---:|"]
    groups = {}
    for key, value in results.items():
        kind = "folds" if value["split"].startswith("fold") else "left-out cohorts"
        groups.setdefault((value["task"], kind), []).extend(value["rows"])
    for (task, kind), rows in groups.items():
        s = summary(rows)
        lines.append(f"| {task} | {kind} | {s['subjects']} | {s['spearman_mean']:.3f} | "
                     f"{s['top_to_bottom_decile']:.2f}x | {s['within_25_percent']}/{s['subjects']} |")
    lines += ["", "| task | split | subject | Spearman | predicted MAE | measured MAE | ratio | lesion predicted / "
              "measured |", "|---|---|---|---:|---:|---:|---:|---|"]
    for value in results.values():
        for r in value["rows"]:
            lesion = (f"{r['lesion_predicted_mae']:.3f} / {r['lesion_measured_mae']:.3f}"
                      if "lesion_measured_mae" in r else "-")
            lines.append(f"| {value['task']} | {value['split']} | {r['id']} | {r['spearman']:.3f} | "
                         f"{r['predicted_mae']:.3f} | {r['measured_mae']:.3f} | "
                         f"{r['predicted_mae'] / r['measured_mae']:.2f} | {lesion} |")
    lines += ["", "| task | splits | decile | predicted | measured |", "|---|---|---:|---:|---:|"]
    for (task, kind), rows in groups.items():
        lines += [f"| {task} | {kind} | {d['decile']} | {d['predicted']:.3f} | {d['measured']:.3f} |"
                  for d in deciles(rows)]
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for (task, kind), rows in groups.items():
            table = deciles(rows)
            ax.plot([d["predicted"] for d in table], [d["measured"] for d in table], "o-", label=f"{task}, {kind}")
        top = max(max(d["measured"], d["predicted"]) for rows in groups.values() for d in deciles(rows))
        ax.plot([0, top], [0, top], "k--", lw=0.8, label="ideal")
        ax.set_xlabel("predicted |error| (decile mean, normalised units)")
        ax.set_ylabel("measured |error|")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figure, dpi=100)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.uncertainty_calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", default="../shared/data")
    parser.add_argument("--family", default="replica")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--splits", choices=("folds", "cohorts"), default="folds")
    parser.add_argument("--out", default="docs/uncertainty_results.json",
                        help="results file (a run resumes from it); with --report, a comma list to report together")
    parser.add_argument("--report", action="store_true", help="only report the results in --out (a comma list)")
    parser.add_argument("--figure", help="with --report: also draw the reliability plot (PNG) there")
    parser.add_argument("--fit", metavar="CHECKPOINT", help="write the calibration beside this checkpoint")
    args = parser.parse_args(argv)
    from medsynth_app.studies import find_studies

    if args.fit:
        from medsynth_app.checkpoint import load_checkpoint
        from medsynth_app.uncertainty import calibration_path

        checkpoint = load_checkpoint(args.fit)
        wanted = set(checkpoint.training.get("validation_subjects", []))
        validation = [s for s in find_studies(args.studies) if s.id in wanted]
        if not validation:
            raise SystemExit(f"{args.fit}: none of its validation subjects ({', '.join(sorted(wanted))}) is in "
                             f"{args.studies}")
        target = checkpoint.targets[0]
        calibration = fit_calibration(checkpoint.build(), checkpoint.family, checkpoint.task, target,
                                      checkpoint.inputs, validation)
        print(f"wrote {calibration.save(calibration_path(args.fit))}")
        return 0
    if not args.report:
        measure(find_studies(args.studies), [t.strip() for t in args.tasks.split(",")], args.family,
                Path(args.out), args.splits)
    results = {key: value for name in args.out.split(",") for key, value in json.loads(Path(name).read_text()).items()}
    print(report(results, Path(args.figure) if args.figure else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
