"""``python -m benchmarks``: train and score every family of the plan on the evaluation folds; write the report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _model_checkpoint(text: str) -> tuple[str, str]:
    name, _, path = text.partition("=")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"--timing-weights wants MODEL=CHECKPOINT, got {text!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--studies", required=True)
    p.add_argument("--out", required=True, help="results folder (a run resumes from what is there)")
    p.add_argument("--tasks", nargs="+", help="e.g. T1+T2->FLAIR T1->T2 (default: the primary tasks)")
    p.add_argument("--secondary", action="store_true", help="also the secondary tasks of the plan")
    p.add_argument("--models", help="comma list of the plan's model names (default: all)")
    p.add_argument("--plan", help="benchmark plan JSON (default: benchmarks/plan.json)")
    p.add_argument("--folds", help="folds file (default: the folds of the evaluation protocol, EVALUATION.md)")
    p.add_argument("--run-folds", help="comma list of the folds to train and score in this process (default: all), "
                   "e.g. to share the folds among machines writing to one results folder")
    p.add_argument("--protocol", choices=("folds", "cohort-out", "both"), default="folds",
                   help="the three folds, leave-one-cohort-out (train on every other cohort of the folds file's "
                        "left_out_cohorts, test on the left-out one), or both (default: folds)")
    p.add_argument("--device", default="auto")
    p.add_argument("--timing-repeats", type=int, default=5, help="syntheses timed per model (0: no timing)")
    p.add_argument("--timing-weights", action="append", type=_model_checkpoint, default=[],
                   metavar="MODEL=CHECKPOINT",
                   help="time MODEL with CHECKPOINT, a checkpoint of the same network, instead of its fold-1 weights "
                        "(e.g. after those were deleted); replaces its earlier timing; repeatable")
    p.add_argument("--report", help="markdown report (default: OUT/benchmarks.md)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the results folder")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import run_benchmark

    try:
        summary = run_benchmark(args.studies, args.out, tasks=args.tasks, secondary=args.secondary,
                                models=args.models.split(",") if args.models else None, plan_path=args.plan,
                                folds_path=args.folds,
                                run_folds=args.run_folds.split(",") if args.run_folds else None,
                                protocols=("folds", "cohort-out") if args.protocol == "both" else (args.protocol,),
                                device=args.device, timing_repeats=args.timing_repeats,
                                timing_weights=dict(args.timing_weights), report=args.report,
                                report_only=args.report_only, progress=not args.quiet)
    except ValueError as err:
        print(f"benchmarks: error: {err}", file=sys.stderr)
        return 2
    for task, result in summary["tasks"].items():
        for name, model in result["models"].items():
            pooled = model["summary"]["pooled"]
            print(f"{task:14s} {name:12s} folds {len(model['folds'])}  PSNR {pooled['psnr']['mean']:.2f}  "
                  f"SSIM {pooled['ssim']['mean']:.3f}")
    print(f"report: {args.report or Path(args.out) / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
