"""The ``medsynth`` command line: studies, train, add-output, finish, synthesize, evaluate, models, benchmark,
demo-data, demo."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .contrast_recognition import check_inputs, describe as describe_inputs
from .contrasts import canonical_contrast
from .folds import Folds
from .imageio import ImageError, is_dicom_folder, opened_image, read_image, write_image
from .metrics import summarise
from .models import TrainSettings, families
from .studies import StudyError, find_studies
from .training.distributed import is_main_process
from .uncertainty import calibration_for
from . import pipeline, weights


def _contrast_list(text: str) -> list[str]:
    return [canonical_contrast(part) for part in text.split(",") if part.strip()]


def _hparam(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError(f"--hparam wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _model_checkpoint(text: str) -> tuple[str, str]:
    name, _, path = text.partition("=")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"--timing-weights wants MODEL=CHECKPOINT, got {text!r}")
    return name, path


def cmd_studies(args) -> int:
    ignored: dict[Path, str] = {}
    rows = [s.describe() for s in find_studies(args.dir, ignored)]
    for path, reason in sorted(ignored.items()):
        print(f"ignored {path}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'study':50s} {'contrasts':26s} {'masks':12s} {'shape':16s} {'spacing (mm)':22s} orient")
    for r in rows:
        masks = ",".join(m for m, present in (("brain", r["brain_mask"]), ("lesion", r["lesion_mask"])) if present)
        print(f"{r['id']:50s} {'+'.join(r['contrasts']):26s} {masks or '-':12s} {'x'.join(map(str, r['shape'])):16s} "
              f"{'x'.join(f'{s:g}' for s in r['spacing']):22s} {r['orientation']}")
    print(f"{len(rows)} studies")
    return 0


def _training_split(args, studies):
    """(train, validation, test) studies for --fold / --all-folds / everything."""
    if args.fold or args.all_folds:
        folds = Folds.load(args.folds)
        if args.fold:
            train, test = folds.split(studies, args.fold)
        else:
            listed = {i for ids in folds.folds.values() for i in ids}
            train, test = [s for s in studies if s.id in listed], []
    else:
        train, test = list(studies), []
    return train, test


def _train_and_validation(args, studies):
    """(train, validation) studies: --fold / --all-folds, then --val-studies or --val-fraction of them held out for
    validation."""
    train, _ = _training_split(args, studies)
    if args.val_studies:
        wanted = [i.strip() for i in args.val_studies.split(",") if i.strip()]
        unknown = [i for i in wanted if i not in {s.id for s in train}]
        if unknown:
            raise ValueError(f"--val-studies: {', '.join(unknown)} not among the training studies")
        return [s for s in train if s.id not in wanted], [s for s in train if s.id in wanted]
    n_val = int(round(len(train) * args.val_fraction)) if args.val_fraction > 0 else 0
    # Evenly spaced over the sorted ids, so validation spans the cohorts instead of taking the first few.
    picked = set(np.linspace(0, len(train) - 1, n_val).round().astype(int)) if n_val else set()
    return [s for i, s in enumerate(train) if i not in picked], [s for i, s in enumerate(train) if i in picked]


def _train_settings(args) -> TrainSettings:
    return TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                         device=args.device, seed=args.seed, progress=not args.quiet, resume_from=args.resume,
                         extra={"partial_path": args.partial} if args.partial else {})


def _save_trained(args, checkpoint) -> int:
    if args.fold:
        checkpoint.training["fold"] = str(args.fold)
    if not is_main_process():  # under torchrun every rank trains; rank 0 alone writes
        return 0
    path = save_checkpoint(checkpoint, args.out)
    print(json.dumps({"checkpoint": str(path), **checkpoint.training}, indent=2, default=str))
    return 0


def cmd_train(args) -> int:
    inputs, targets = _contrast_list(args.inputs), _contrast_list(args.target)
    init = load_checkpoint(args.init) if args.init else None
    inherited = init.hparams if init is not None and init.family == args.model else {}
    hparams = {**inherited, **dict(args.hparam)}
    studies = pipeline.trainable_studies(args.model, inputs, targets, find_studies(args.studies), hparams)
    train, validation = _train_and_validation(args, studies)
    print(f"training {args.model} {'+'.join(inputs)}->{'+'.join(targets)} on {len(train)} studies "
          f"({len(validation)} for validation)", file=sys.stderr)
    checkpoint = pipeline.train(args.model, inputs, targets, train, validation, hparams=dict(args.hparam),
                                settings=_train_settings(args), normalisation=args.normalisation, init=init)
    return _save_trained(args, checkpoint)


def cmd_add_output(args) -> int:
    base = load_checkpoint(args.weights)
    target = canonical_contrast(args.target)
    studies = [s for s in find_studies(args.studies) if s.has([*base.inputs, target])]
    train, validation = _train_and_validation(args, studies)
    print(f"adding a {target} decoder to {args.weights} ({base.family} {'+'.join(base.inputs)}->"
          f"{'+'.join(base.targets)}) on {len(train)} studies ({len(validation)} for validation)", file=sys.stderr)
    checkpoint = pipeline.add_output(base, target, train, validation, settings=_train_settings(args),
                                     hparams=dict(args.hparam))
    return _save_trained(args, checkpoint)


def cmd_finish(args) -> int:
    base = load_checkpoint(args.weights)
    record = base.training
    if "subjects" not in record:
        raise ValueError(f"{args.weights}: its training record lists no studies to finish it on")
    studies = {s.id: s for s in find_studies(args.studies)}
    wanted = [*record["subjects"], *record.get("validation_subjects", [])]
    missing = [i for i in wanted if i not in studies]
    if missing:
        raise ValueError(f"{args.weights} trained on studies not under {args.studies}: {', '.join(missing)}")
    print(f"finishing {args.weights} ({base.family} {base.task}) on its {len(record['subjects'])} training studies",
          file=sys.stderr)
    checkpoint = pipeline.finish(base, [studies[i] for i in record["subjects"]],
                                 [studies[i] for i in record.get("validation_subjects", [])],
                                 hparams=dict(args.hparam), settings=TrainSettings(
                                     batch_size=args.batch_size or record.get("batch_size", 16), device=args.device,
                                     seed=record.get("seed", 0) if args.seed is None else args.seed,
                                     progress=not args.quiet))
    path = save_checkpoint(checkpoint, args.out)
    print(json.dumps({"checkpoint": str(path), **checkpoint.training}, indent=2, default=str))
    return 0


def _checkpoint_for(args, inputs, target):
    if args.weights:
        return Path(args.weights), load_checkpoint(args.weights)
    return weights.find(args.model, target, inputs)


def cmd_synthesize(args) -> int:
    pairs = []
    for item in args.input:
        name, _, path = item.partition("=")
        if not path:
            raise ValueError(f"--input wants CONTRAST=FILE, got {item!r}")
        pairs.append((canonical_contrast(name), path))
    inputs = [c for c, _ in pairs]
    target = canonical_contrast(args.target) if args.target else None
    if args.dicom_reference and not args.out.endswith(("/", os.sep)):
        raise ValueError("--dicom-reference needs a DICOM output: give --out a folder path ending with /")
    if args.weights:
        path, checkpoint = Path(args.weights), load_checkpoint(args.weights)
    else:
        if not target:
            raise ValueError("--model needs --target")
        path, checkpoint = weights.find(args.model, target, inputs)
    target = target or checkpoint.targets[0]
    started = time.time()
    with contextlib.ExitStack() as unpacked:  # a zip of a DICOM series is read from a temporary folder
        pairs = [(c, unpacked.enter_context(opened_image(p))) for c, p in pairs]
        images = {c: read_image(p) for c, p in pairs}
        for line in describe_inputs(check_inputs(images)):
            print(line, file=sys.stderr)
        calibration = calibration_for(path, target) if args.uncertainty else None
        image = pipeline.synthesize(
            checkpoint, images, target,
            brain_mask=read_image(args.brain_mask, mask=True) if args.brain_mask else None,
            intensity=args.intensity, uncertainty=calibration,
        )
        image, uncertainty_map = image if calibration else (image, None)
        used = checkpoint.build().usable_inputs(inputs)
        dicom_reference = args.dicom_reference and unpacked.enter_context(opened_image(args.dicom_reference))
        dicom_reference = dicom_reference or next((p for _, p in pairs if is_dicom_folder(p)), None)
        provenance = pipeline.provenance_for(checkpoint, used, target)
        write_image(image, args.out, provenance, dicom_reference=dicom_reference)
        if uncertainty_map is not None:
            write_image(uncertainty_map, args.uncertainty, dataclasses.replace(provenance, map="UNCERTAINTY"),
                        dicom_reference=dicom_reference)
            print(f"wrote {args.uncertainty} (expected absolute error of the synthetic {target})")
    print(f"wrote {args.out} (SYNTHETIC {target} by {checkpoint.family} from {'+'.join(used)}, "
          f"weights {path}, {time.time() - started:.1f} s)")
    return 0


def cmd_evaluate(args) -> int:
    target = canonical_contrast(args.target)
    inputs = _contrast_list(args.inputs)
    studies = find_studies(args.studies)
    folds = Folds.load(args.folds)
    result: dict = {"target": target, "inputs": inputs}
    if args.cv:
        rows = []
        for fold in folds.folds:
            train, test = folds.split([s for s in studies if s.has([*inputs, target])], fold)
            checkpoint = pipeline.train(args.model, inputs, [target], train, hparams=dict(args.hparam),
                                        settings=TrainSettings(progress=not args.quiet))
            rows += [{**r, "fold": fold} for r in pipeline.evaluate(checkpoint, test, target, inputs,
                                                                     progress=not args.quiet)]
        result["weights"] = f"{args.model} trained per fold (cross-validation)"
    else:
        path, checkpoint = _checkpoint_for(args, inputs, target)
        selected = folds.split(studies, args.fold)[1] if args.fold else studies
        rows = pipeline.evaluate(checkpoint, selected, target, inputs, progress=not args.quiet)
        result["weights"] = str(path)
        trained_on = set(checkpoint.training.get("subjects", []))
        overlap = sorted(trained_on & {r["id"] for r in rows})
        if overlap:
            result["warning"] = (f"{len(overlap)} evaluated subjects were in this checkpoint's training set; "
                                 "these are not held-out numbers (use --cv for cross-validation)")
            print(f"warning: {result['warning']}", file=sys.stderr)
    for row in rows:
        if "error" in row:
            print(f"warning: skipped {row['id']}: {row['error']}", file=sys.stderr)
    result["skipped"] = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    if not rows:
        raise ValueError(f"no usable study under {args.studies} has {'+'.join(inputs)} and {target}")
    for row in rows:
        row["cohort"] = folds.cohort(row["id"])
    result["subjects"] = rows
    result["summary"] = {"pooled": summarise(rows)}
    for cohort in sorted({r["cohort"] for r in rows}):
        result["summary"][cohort] = summarise([r for r in rows if r["cohort"] == cohort])
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    for cohort, metrics in result["summary"].items():
        line = ", ".join(f"{m} {metrics[m]['mean']:.3f}±{metrics[m]['sd']:.3f}" for m in ("psnr", "ssim", "mae")
                         if m in metrics)
        print(f"{cohort:8s} n={metrics['psnr']['n']:2d}  {line}")
    return 0


def cmd_models(args) -> int:
    rows = [{"path": str(p), **c.summary()} for p, c in weights.installed()]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        val = r["training"].get("validation", {})
        scores = "; ".join(f"{t}: PSNR {m.get('psnr', float('nan')):.2f} SSIM {m.get('ssim', float('nan')):.3f}"
                           for t, m in val.items())
        print(f"{r['family']:11s} {'+'.join(r['inputs']) + '->' + '+'.join(r['targets']):22s} {r['path']}"
              f"{'  validation ' + scores if scores else ''}")
    print(f"{len(rows)} checkpoints; families: {', '.join(families())}")
    return 0


def cmd_demo_data(args) -> int:
    from .simulation import simulate_cohort

    paths = simulate_cohort(args.out, n_subjects=args.subjects, seed=args.seed, spacing=args.spacing)
    print(f"wrote {len(paths)} simulated studies to {args.out}")
    return 0


def cmd_benchmark(args) -> int:
    from .benchmark import run_benchmark

    command = "medsynth benchmark " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["benchmark"] else "medsynth benchmark"
    summary = run_benchmark(args.studies, args.out, tasks=args.tasks, secondary=args.secondary,
                            models=args.models.split(",") if args.models else None, plan_path=args.plan,
                            folds_path=args.folds, run_folds=args.run_folds.split(",") if args.run_folds else None,
                            device=args.device, timing_repeats=args.timing_repeats,
                            timing_weights=dict(args.timing_weights),
                            report=args.report, readme=args.readme, report_only=args.report_only,
                            progress=not args.quiet, command=command)
    for task, result in summary["tasks"].items():
        for name, model in result["models"].items():
            pooled = model["summary"]["pooled"]
            print(f"{task:14s} {name:12s} folds {len(model['folds'])}  PSNR {pooled['psnr']['mean']:.2f}  "
                  f"SSIM {pooled['ssim']['mean']:.3f}")
    print(f"report: {args.report or Path(args.out) / 'benchmarks.md'}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsynth", description="MRI contrast synthesis")
    parser.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("studies", help="list the studies found in a folder")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_studies)

    def training_options(p):
        p.add_argument("--hparam", action="append", type=_hparam, default=[], metavar="KEY=VALUE",
                       help="family hyperparameter (JSON value), repeatable")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    def folds_option(p):
        p.add_argument("--folds", help="folds file (default: the EVALUATION.md folds)")

    def schedule_options(p):
        p.add_argument("--studies", required=True)
        folds_option(p)
        group = p.add_mutually_exclusive_group()
        group.add_argument("--fold", help="train on the other folds of this test fold")
        group.add_argument("--all-folds", action="store_true", help="train on every subject listed in the folds")
        validation = p.add_mutually_exclusive_group()
        validation.add_argument("--val-fraction", type=float, default=0.0, help="share of training studies held out")
        validation.add_argument("--val-studies", help="comma-separated ids of the training studies held out")
        p.add_argument("--epochs", type=int, default=10)
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--lr", type=float, default=None)
        p.add_argument("--device", default="auto")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--resume", help="continue an interrupted run from its partial-training file")
        p.add_argument("--partial", help="where to keep the partial-training file (default: a temporary folder)")
        p.add_argument("--out", required=True)
        training_options(p)

    p = sub.add_parser("train", help="train a model family and write a checkpoint")
    p.add_argument("--model", required=True, choices=families())
    p.add_argument("--inputs", required=True, help="comma-separated input contrasts, e.g. T1,T2")
    p.add_argument("--target", required=True, help="target contrast(s), comma-separated")
    p.add_argument("--normalisation", default="mean", choices=("mean", "percentile", "zscore"))
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint's weights (same family, inputs and targets, or for "
                        "multimodal a checkpoint holding those encoders and decoders; its hyperparameters are the "
                        "defaults --hparam overrides)")
    schedule_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("add-output", help="add a decoder for a new contrast to a trained multimodal checkpoint and "
                                          "train it alone (encoders and the other decoders frozen)")
    p.add_argument("--weights", required=True, help="the trained checkpoint")
    p.add_argument("--target", required=True, help="the new output contrast")
    schedule_options(p)
    p.set_defaults(func=cmd_add_output)

    p = sub.add_parser("finish", help="run a trained checkpoint's finishing step again with other finishing "
                                      "hyperparameters (e.g. cae3d precise_bn), on the studies it trained on")
    p.add_argument("--weights", required=True, help="the trained checkpoint")
    p.add_argument("--studies", required=True, help="folder holding the studies it trained on")
    p.add_argument("--batch-size", type=int, help="batch size of the step (default: the training's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, help="seed of the step's sampling (default: the training's)")
    p.add_argument("--out", required=True, help="the finished checkpoint (may be --weights: replaced atomically)")
    training_options(p)
    p.set_defaults(func=cmd_finish)

    p = sub.add_parser("synthesize", help="synthesise a contrast from input images")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint file")
    src.add_argument("--model", help="family: use its installed checkpoint for these inputs and target")
    p.add_argument("--input", action="append", required=True, metavar="CONTRAST=FILE", help="file, DICOM folder or zip")
    p.add_argument("--target")
    p.add_argument("--brain-mask")
    p.add_argument("--intensity", default="scaled", choices=("scaled", "normalised"))
    p.add_argument("--out", required=True, help="output file (.nii.gz, .nii, .nrrd), or a folder path ending with / "
                                                "to write a DICOM series there")
    p.add_argument("--dicom-reference", metavar="DIR",
                   help="DICOM series folder (or zip) whose patient and study a DICOM output joins (default: the "
                        "first DICOM input; without one, a new study of a placeholder patient)")
    p.add_argument("--uncertainty", metavar="PATH", help="also write the uncertainty map (expected absolute error "
                                                         "per voxel, same grid and units) there")
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("evaluate", help="score a model on studies with the EVALUATION.md metrics")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights")
    src.add_argument("--model", help="family: its installed checkpoint, or with --cv trained per fold")
    p.add_argument("--inputs", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--studies", required=True)
    p.add_argument("--fold", help="evaluate on this fold's test subjects")
    p.add_argument("--cv", action="store_true", help="train --model on two folds, test on the third, for each fold")
    p.add_argument("--json", help="write per-subject and summary metrics here")
    folds_option(p)
    training_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list installed checkpoints")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo-data", help="write the simulated multi-contrast demo cohort")
    p.add_argument("--out", required=True)
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("benchmark", help="train and score every family on the evaluation folds; write the report")
    p.add_argument("--studies", required=True)
    p.add_argument("--out", required=True, help="results folder (a run resumes from what is there)")
    p.add_argument("--tasks", nargs="+", help="e.g. T1+T2->FLAIR T1->T2 (default: the primary tasks)")
    p.add_argument("--secondary", action="store_true", help="also the secondary tasks of the plan")
    p.add_argument("--models", help="comma list of the plan's model names (default: all)")
    p.add_argument("--plan", help="benchmark plan JSON (default: medsynth_app/data/benchmark.json)")
    folds_option(p)
    p.add_argument("--run-folds", help="comma list of the folds to train and score in this process (default: all), "
                   "e.g. to share the folds among machines writing to one results folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--timing-repeats", type=int, default=5, help="syntheses timed per model (0: no timing)")
    p.add_argument("--timing-weights", action="append", type=_model_checkpoint, default=[],
                   metavar="MODEL=CHECKPOINT",
                   help="time MODEL with CHECKPOINT, a checkpoint of the same network, instead of its fold-1 weights "
                        "(e.g. after those were deleted); replaces its earlier timing; repeatable")
    p.add_argument("--report", help="markdown report (default: OUT/benchmarks.md)")
    p.add_argument("--readme", help="README whose benchmark table to update")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the results folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("demo", help="synthesise FLAIR for a demo study end to end")
    p.add_argument("--out", default="demo_output")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "cv", False) and not args.model:
        print("medsynth: error: --cv needs --model", file=sys.stderr)
        return 2
    # the library reports each epoch's validation scores (and resumptions) at INFO level: show them on stderr
    package, handler = logging.getLogger("medsynth_app"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        return args.func(args)
    except (ImageError, StudyError, CheckpointError, ValueError) as err:
        print(f"medsynth: error: {err}", file=sys.stderr)
        return 2
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
