"""``medsynth train``, ``add-output`` and ``finish``."""
from __future__ import annotations

import json
import sys

from .options import add_folds_option, add_training_options, contrast_list


def _training_studies(args, studies):
    """The training studies of --fold / --all-folds / everything."""
    if not (args.fold or args.all_folds):
        return list(studies)
    from ..folds import Folds

    folds = Folds.load(args.folds)
    if args.fold:
        return folds.split(studies, args.fold)[0]
    listed = {i for ids in folds.folds.values() for i in ids}
    return [s for s in studies if s.id in listed]


def _train_and_validation(args, studies):
    """(train, validation) studies: --fold / --all-folds, then --val-studies or --val-fraction of them held out."""
    from ..folds import validation_split

    named = [i.strip() for i in args.val_studies.split(",") if i.strip()] if args.val_studies else None
    try:
        return validation_split(_training_studies(args, studies), share=args.val_fraction, named=named)
    except ValueError as err:
        raise ValueError(f"--val-studies: {err}") from None


def _train_settings(args):
    from ..models import TrainSettings

    return TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                         device=args.device, seed=args.seed, progress=not args.quiet, resume_from=args.resume,
                         extra={"partial_path": args.partial} if args.partial else {})


def _save_trained(args, checkpoint) -> int:
    from ..checkpoint import save_checkpoint
    from ..training.distributed import is_main_process

    if args.fold:
        checkpoint.training["fold"] = str(args.fold)
    if not is_main_process():  # under torchrun every rank trains; rank 0 alone writes
        return 0
    path = save_checkpoint(checkpoint, args.out)
    print(json.dumps({"checkpoint": str(path), **checkpoint.training}, indent=2, default=str))
    return 0


def cmd_train(args) -> int:
    from .. import pipeline
    from ..checkpoint import load_checkpoint
    from ..models import families
    from ..studies import find_studies
    from ..task import Task

    if args.model not in families():
        raise ValueError(f"unknown model family {args.model!r}; known: {', '.join(families())}")
    task = Task(contrast_list(args.inputs), contrast_list(args.target))
    init = load_checkpoint(args.init) if args.init else None
    inherited = init.hparams if init is not None and init.family == args.model else {}
    hparams = {**inherited, **dict(args.hparam)}
    studies = pipeline.trainable_studies(args.model, task.inputs, task.targets, find_studies(args.studies), hparams)
    train, validation = _train_and_validation(args, studies)
    print(f"training {args.model} {task} on {len(train)} studies ({len(validation)} for validation)",
          file=sys.stderr)
    checkpoint = pipeline.train(args.model, task.inputs, task.targets, train, validation, hparams=dict(args.hparam),
                                settings=_train_settings(args), normalisation=args.normalisation, init=init)
    return _save_trained(args, checkpoint)


def cmd_add_output(args) -> int:
    from .. import pipeline
    from ..checkpoint import load_checkpoint
    from ..contrasts import canonical_contrast
    from ..studies import find_studies

    base = load_checkpoint(args.weights)
    target = canonical_contrast(args.target)
    studies = [s for s in find_studies(args.studies) if s.has([*base.inputs, target])]
    train, validation = _train_and_validation(args, studies)
    print(f"adding a {target} decoder to {args.weights} ({base.family} {base.task}) on {len(train)} studies "
          f"({len(validation)} for validation)", file=sys.stderr)
    checkpoint = pipeline.add_output(base, target, train, validation, settings=_train_settings(args),
                                     hparams=dict(args.hparam))
    return _save_trained(args, checkpoint)


def cmd_finish(args) -> int:
    from .. import pipeline
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..models import TrainSettings
    from ..studies import find_studies

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


def _schedule_options(p) -> None:
    p.add_argument("--studies", required=True)
    add_folds_option(p)
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
    add_training_options(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model family and write a checkpoint")
    p.add_argument("--model", required=True, help="model family (`medsynth models` lists them)")
    p.add_argument("--inputs", required=True, help="comma-separated input contrasts, e.g. T1,T2")
    p.add_argument("--target", required=True, help="target contrast(s), comma-separated")
    p.add_argument("--normalisation", default="mean", choices=("mean", "percentile", "zscore"))
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint's weights (same family, inputs and targets, or for "
                        "multimodal a checkpoint holding those encoders and decoders; its hyperparameters are the "
                        "defaults --hparam overrides)")
    _schedule_options(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("add-output", help="add a decoder for a new contrast to a trained multimodal checkpoint "
                                                 "and train it alone (encoders and the other decoders frozen)")
    p.add_argument("--weights", required=True, help="the trained checkpoint")
    p.add_argument("--target", required=True, help="the new output contrast")
    _schedule_options(p)
    p.set_defaults(func=cmd_add_output)

    p = subparsers.add_parser("finish", help="run a trained checkpoint's finishing step again with other finishing "
                                             "hyperparameters (e.g. cae3d precise_bn), on the studies it trained on")
    p.add_argument("--weights", required=True, help="the trained checkpoint")
    p.add_argument("--studies", required=True, help="folder holding the studies it trained on")
    p.add_argument("--batch-size", type=int, help="batch size of the step (default: the training's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, help="seed of the step's sampling (default: the training's)")
    p.add_argument("--out", required=True, help="the finished checkpoint (may be --weights: replaced atomically)")
    add_training_options(p)
    p.set_defaults(func=cmd_finish)
