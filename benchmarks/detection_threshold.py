"""``python -m benchmarks.detection_threshold --studies DIR``: tune the z-score threshold of the lesion detection rule
(`medsynth_app.metrics.hyperintensities`) on the acquired FLAIRs with a lesion mask under DIR, and print it."""
from __future__ import annotations

import argparse
import sys


def acquired_flairs(root: str):
    """(normalised FLAIR, brain mask, lesion mask) of every study under ``root`` with a FLAIR and a lesion mask."""
    from medsynth_app.pipeline import prepare_study
    from medsynth_app.studies import find_studies

    for study in find_studies(root):
        if study.has(["FLAIR"]) and study.lesion_mask is not None:
            subject = prepare_study(study, ["FLAIR"], "FLAIR", ["FLAIR"])
            if subject.lesion is not None and (subject.lesion & subject.mask).any():
                yield subject.images["FLAIR"], subject.mask, subject.lesion


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.detection_threshold", description=__doc__)
    p.add_argument("--studies", required=True)
    args = p.parse_args(argv)
    from medsynth_app.metrics import tune_detection_z

    cases = list(acquired_flairs(args.studies))
    z, score = tune_detection_z(cases)
    print(f"DETECTION_Z = {z}  (mean Dice {score:.3f} on {len(cases)} acquired FLAIRs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
