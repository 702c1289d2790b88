"""``medsynth synthesize`` and ``medsynth models``."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from ..contrasts import canonical_contrast


def _input_pairs(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, _, path = item.partition("=")
        if not path:
            raise ValueError(f"--input wants CONTRAST=FILE, got {item!r}")
        pairs.append((canonical_contrast(name), path))
    return pairs


def installed_choice(family: str, inputs: list[str], target: str | None):
    """(path, checkpoint, target) of the installed ``family`` checkpoint for ``inputs`` and ``target``. Without a
    target: the only target offered by the family's checkpoints taking exactly these inputs (else by those taking
    more, for families that accept a subset), or an error listing the choices."""
    from .. import weights
    from ..task import join

    if target:
        return (*weights.find(family, target, inputs), target)
    installed = [c for _, c in weights.installed() if c.family == family]
    exact = [c for c in installed if sorted(c.inputs) == sorted(inputs)]
    wider = [c for c in installed if set(inputs) <= set(c.inputs)]
    offers = sorted({t for c in exact or wider for t in c.targets if t not in inputs})
    if len(offers) == 1:
        return (*weights.find(family, offers[0], inputs), offers[0])
    if not offers:
        raise ValueError(f"no installed {family} checkpoint synthesizes anything from {join(inputs)}; "
                         "see `medsynth models`")
    raise ValueError(f"{family} has checkpoints for several targets from {join(inputs)}: choose one with "
                     f"--target ({', '.join(offers)})")


def cmd_synthesize(args) -> int:
    from .. import pipeline
    from ..checkpoint import load_checkpoint
    from ..contrast_recognition import check_inputs, describe as describe_inputs
    from ..imageio import is_dicom_folder, opened_image, read_image, write_image
    from ..uncertainty import calibration_for
    from ..task import join

    pairs = _input_pairs(args.input)
    inputs = [c for c, _ in pairs]
    target = canonical_contrast(args.target) if args.target else None
    if args.dicom_reference and not args.out.endswith(("/", os.sep)):
        raise ValueError("--dicom-reference needs a DICOM output: give --out a folder path ending with /")
    if args.weights:
        path, checkpoint = Path(args.weights), load_checkpoint(args.weights)
        target = target or checkpoint.targets[0]
    else:
        path, checkpoint, target = installed_choice(args.model, inputs, target)
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
    print(f"wrote {args.out} (SYNTHETIC {target} by {checkpoint.family} from {join(used)}, "
          f"weights {path}, {time.time() - started:.1f} s)")
    return 0


def cmd_models(args) -> int:
    from .. import weights
    from ..models import families
    from ..task import Task

    rows = [{"path": str(p), **c.summary()} for p, c in weights.installed()]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        val = r["training"].get("validation", {})
        scores = "; ".join(f"{t}: PSNR {m.get('psnr', float('nan')):.2f} SSIM {m.get('ssim', float('nan')):.3f}"
                           for t, m in val.items())
        print(f"{r['family']:11s} {str(Task(r['inputs'], r['targets'])):22s} {r['path']}"
              f"{'  validation ' + scores if scores else ''}")
    print(f"{len(rows)} checkpoints; families: {', '.join(families())}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("synthesize", help="synthesize a contrast from input images")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint file")
    src.add_argument("--model", help="family: use its installed checkpoint for these inputs (and --target)")
    p.add_argument("--input", action="append", required=True, metavar="CONTRAST=FILE", help="file, DICOM folder or zip")
    p.add_argument("--target", help="contrast to synthesize (default: the only one the checkpoint offers for the "
                                    "inputs; several are listed)")
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

    p = subparsers.add_parser("models", help="list installed checkpoints")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
