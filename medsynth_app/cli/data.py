"""``medsynth studies`` and ``medsynth demo-data``."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_studies(args) -> int:
    from ..studies import find_studies
    from ..task import join

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
        print(f"{r['id']:50s} {join(r['contrasts']):26s} {masks or '-':12s} {'x'.join(map(str, r['shape'])):16s} "
              f"{'x'.join(f'{s:g}' for s in r['spacing']):22s} {r['orientation']}")
    print(f"{len(rows)} studies")
    return 0


def cmd_demo_data(args) -> int:
    from ..simulation import simulate_cohort

    paths = simulate_cohort(args.out, n_subjects=args.subjects, seed=args.seed, spacing=args.spacing)
    print(f"wrote {len(paths)} simulated studies to {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("studies", help="list the studies found in a folder")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_studies)

    p = subparsers.add_parser("demo-data", help="write the simulated multi-contrast demo cohort")
    p.add_argument("--out", required=True)
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")
    p.set_defaults(func=cmd_demo_data)
