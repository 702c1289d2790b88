"""``medsynth evaluate``: the metrics of the evaluation protocol, on a checkpoint or cross-validated."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .options import add_folds_option, add_training_options, contrast_list


def _cross_validated_rows(args, folds, studies, inputs, target) -> list[dict]:
    from .. import pipeline
    from ..models import TrainSettings

    rows = []
    for fold in folds.folds:
        train, test = folds.split([s for s in studies if s.has([*inputs, target])], fold)
        checkpoint = pipeline.train(args.model, inputs, [target], train, hparams=dict(args.hparam),
                                    settings=TrainSettings(progress=not args.quiet))
        rows += [{**r, "fold": fold} for r in pipeline.evaluate(checkpoint, test, target, inputs,
                                                                 progress=not args.quiet)]
    return rows


def _checkpoint_rows(args, folds, studies, inputs, target, result: dict) -> list[dict]:
    from .. import pipeline, weights
    from ..checkpoint import load_checkpoint

    if args.weights:
        path, checkpoint = Path(args.weights), load_checkpoint(args.weights)
    else:
        path, checkpoint = weights.find(args.model, target, inputs)
    selected = folds.split(studies, args.fold)[1] if args.fold else studies
    rows = pipeline.evaluate(checkpoint, selected, target, inputs, progress=not args.quiet)
    result["weights"] = str(path)
    overlap = sorted(set(checkpoint.training.get("subjects", [])) & {r["id"] for r in rows})
    if overlap:
        result["warning"] = (f"{len(overlap)} evaluated subjects were in this checkpoint's training set; "
                             "these are not held-out numbers (use --cv for cross-validation)")
        print(f"warning: {result['warning']}", file=sys.stderr)
    return rows


def cmd_evaluate(args) -> int:
    from ..contrasts import canonical_contrast
    from ..folds import Folds
    from ..metrics import json_ready, summarise
    from ..studies import find_studies
    from ..task import join

    if args.cv and not args.model:
        raise ValueError("--cv needs --model")
    target = canonical_contrast(args.target)
    inputs = contrast_list(args.inputs)
    studies = find_studies(args.studies)
    folds = Folds.load(args.folds)
    result: dict = {"target": target, "inputs": inputs}
    if args.cv:
        rows = _cross_validated_rows(args, folds, studies, inputs, target)
        result["weights"] = f"{args.model} trained per fold (cross-validation)"
    else:
        rows = _checkpoint_rows(args, folds, studies, inputs, target, result)
    for row in rows:
        if "error" in row:
            print(f"warning: skipped {row['id']}: {row['error']}", file=sys.stderr)
    result["skipped"] = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    if not rows:
        raise ValueError(f"no usable study under {args.studies} has {join(inputs)} and {target}")
    for row in rows:
        row["cohort"] = folds.cohort(row["id"])
    result["subjects"] = rows
    result["summary"] = {"pooled": summarise(rows)}
    for cohort in sorted({r["cohort"] for r in rows}):
        result["summary"][cohort] = summarise([r for r in rows if r["cohort"] == cohort])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_ready(result), indent=2))
    for cohort, metrics in result["summary"].items():
        line = ", ".join(f"{m} {metrics[m]['mean']:.3f}±{metrics[m]['sd']:.3f}" for m in ("psnr", "ssim", "mae")
                         if m in metrics)
        lesion = lesion_line(metrics)
        print(f"{cohort:8s} n={metrics['psnr']['n']:2d}  " + (f"{lesion}\n{'':15s}{line}" if lesion else line))
    return 0


def lesion_line(summary: dict) -> str:
    """The lesion numbers of a summary, first in every report: conspicuity (synthetic / acquired, fraction kept),
    lesion MAE, detection Dice and sensitivity (synthetic / acquired), BraSyn SSIM in the lesion; "" without a lesion."""
    if "lesion_conspicuity" not in summary:
        return ""
    mean = lambda key, digits=2: f"{summary[key]['mean']:.{digits}f}" if key in summary else "–"  # noqa: E731
    return (f"lesion conspicuity {mean('lesion_conspicuity')} / {mean('acquired_lesion_conspicuity')} acquired "
            f"(kept {mean('lesion_conspicuity_kept')}), lesion MAE {mean('lesion_mae', 3)}, detection Dice "
            f"{mean('lesion_detection_dice')} / {mean('acquired_lesion_detection_dice')} acquired, sensitivity "
            f"{mean('lesion_detection_sensitivity')} / {mean('acquired_lesion_detection_sensitivity')}, "
            f"BraSyn SSIM lesion {mean('brasyn_ssim_lesion', 3)}")


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="score a model on studies with the metrics of the evaluation protocol")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights")
    src.add_argument("--model", help="family: its installed checkpoint, or with --cv trained per fold")
    p.add_argument("--inputs", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--studies", required=True)
    p.add_argument("--fold", help="evaluate on this fold's test subjects")
    p.add_argument("--cv", action="store_true", help="train --model on two folds, test on the third, for each fold")
    p.add_argument("--json", help="write per-subject and summary metrics here")
    add_folds_option(p)
    add_training_options(p)
    p.set_defaults(func=cmd_evaluate)
