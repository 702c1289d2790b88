"""Train the contrast recogniser on the shared data's labelled volumes and measure it leave-one-cohort-out.

    python -m benchmarks.contrast_recogniser --data ../shared/data

Writes medsynth_app/data/contrast_recogniser.json and prints the leave-one-cohort-out accuracy per cohort and
per contrast (docs/uncertainty.md).
"""
from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np

from medsynth_app.contrast_recognition import DOUBTED, MODEL_PATH, ContrastRecogniser, image_features
from medsynth_app.contrasts import parse_name

CLASSES = ("T1", "T1C", "T2", "PD", "FLAIR")


def cohort_of(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[:2]) if parts[0] == "open_ms_data" else parts[0]


def labelled_volumes(data: Path) -> list[tuple[str, str, str]]:
    """(path, contrast, cohort) of every 3-D contrast volume the manifest lists."""
    out = []
    with (data / "manifest.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = parse_name(Path(row["path"]).name)
            shape = [int(v) for v in row["shape"].strip("()").split(",") if v.strip()]
            if parsed and parsed.contrast in CLASSES and len(shape) == 3 and min(shape) > 1 \
                    and row["path"].endswith((".nii", ".nii.gz")):
                out.append((row["path"], parsed.contrast, cohort_of(row["path"])))
    return out


def fit(features: np.ndarray, labels: list[str]) -> ContrastRecogniser:
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    z = scaler.transform(features)
    classifier = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit(z, labels)
    centroids, precisions, distance_95 = {}, {}, {}
    for c in classifier.classes_:
        rows = z[np.asarray(labels) == c]
        centroid = rows.mean(axis=0)
        precision = LedoitWolf().fit(rows).precision_ if len(rows) > 2 else np.eye(z.shape[1])
        distances = np.sqrt(np.einsum("ij,jk,ik->i", rows - centroid, precision, rows - centroid).clip(0))
        centroids[c], precisions[c] = centroid.tolist(), precision.tolist()
        distance_95[c] = float(np.percentile(distances, 95))
    return ContrastRecogniser(list(classifier.classes_), scaler.mean_.tolist(), scaler.scale_.tolist(),
                              classifier.coef_.tolist(), classifier.intercept_.tolist(), centroids, precisions,
                              distance_95)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contrast_recogniser", description=__doc__)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--cache", default="/tmp/medsynth_contrast_features.npz")
    parser.add_argument("--out", default=str(MODEL_PATH))
    args = parser.parse_args(argv)
    import nibabel as nib

    data = Path(args.data)
    volumes = labelled_volumes(data)
    cache = Path(args.cache)
    if cache.is_file() and list(np.load(cache)["paths"]) == [p for p, _, _ in volumes]:
        features = np.load(cache)["features"]
    else:
        rows, seconds = [], []
        for path, _, _ in volumes:
            volume = np.asanyarray(nib.load(data / path).dataobj, dtype=np.float32)
            started = time.time()
            rows.append(image_features(volume))
            seconds.append(time.time() - started)
        features = np.array(rows)
        np.savez(cache, paths=[p for p, _, _ in volumes], features=features)
        print(f"features: median {np.median(seconds):.2f} s, max {np.max(seconds):.2f} s per volume")
    labels = [c for _, c, _ in volumes]
    cohorts = [k for _, _, k in volumes]
    print(f"{len(volumes)} volumes: {dict(Counter(labels))}")
    right_by_contrast, total_by_contrast = Counter(), Counter()
    alarms = Counter()  # (claimed right / wrong, mismatch reported)
    print("| left-out cohort | volumes | correct | mistakes |\n|---|---:|---:|---|")
    for cohort in sorted(set(cohorts)):
        test = np.array([k == cohort for k in cohorts])
        model = fit(features[~test], [l for l, t in zip(labels, test) if not t])
        mistakes = []
        for f, label, path in zip(features[test], np.asarray(labels)[test], np.asarray([p for p, _, _ in volumes])[test]):
            p = model.probabilities(f)
            guess = max(p, key=p.get)
            total_by_contrast[label] += 1
            for claimed in model.classes:
                alarms[(claimed == label, claimed != guess and p[claimed] < DOUBTED)] += 1
            if guess == label:
                right_by_contrast[label] += 1
            else:
                mistakes.append(f"{Path(path).parent.name}/{Path(path).name} {label}->{guess} ({p[guess]:.2f})")
        print(f"| {cohort} | {int(test.sum())} | {int(test.sum()) - len(mistakes)} | {'; '.join(mistakes)} |")
    print("| contrast | volumes | correct |\n|---|---:|---:|")
    for c in CLASSES:
        print(f"| {c} | {total_by_contrast[c]} | {right_by_contrast[c]} |")
    print(f"overall: {sum(right_by_contrast.values())}/{sum(total_by_contrast.values())}")
    print(f"mismatch warnings (p(claimed) < {DOUBTED}): false alarms {alarms[(True, True)]}/"
          f"{alarms[(True, True)] + alarms[(True, False)]} volumes given as their own contrast; wrong claims caught "
          f"{alarms[(False, True)]}/{alarms[(False, True)] + alarms[(False, False)]}")
    print(f"wrote {fit(features, labels).save(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
