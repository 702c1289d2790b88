"""`medsynth demo`: synthesise FLAIR from T1+T2 for one study end to end and show it.

Uses the studies under $MEDSYNTH_DATA when set, else builds the simulated demo cohort. Writes the synthetic NIfTI,
a PNG montage (inputs, acquired FLAIR, synthetic FLAIR, absolute error) and the metrics against the acquired FLAIR.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from . import pipeline, weights  # noqa: E402
from .imageio import read_image, write_image  # noqa: E402
from .simulation import simulate_cohort  # noqa: E402
from .studies import find_studies  # noqa: E402

INPUTS, TARGET = ("T1", "T2"), "FLAIR"


def demo_studies(out: Path):
    root = os.environ.get("MEDSYNTH_DATA")
    if root:
        return find_studies(root)
    cohort = out / "demo_studies"
    if not (cohort / "README.txt").exists():
        print(f"building the simulated demo cohort in {cohort} ...", flush=True)
        simulate_cohort(cohort, n_subjects=1, seed=2026)
    return find_studies(cohort)


def montage(images: dict[str, np.ndarray], error: np.ndarray, path: Path, title: str) -> Path:
    """Middle axial slice of each image in one row, plus the absolute error on its own colour scale."""
    k = images[TARGET].shape[2] // 2
    panels = [*images.items(), ("|error|", error)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
    for ax, (name, volume) in zip(axes, panels):
        data = np.rot90(volume[:, :, k])
        vmax = np.percentile(volume[volume > 0], 99.5) if (volume > 0).any() else 1
        ax.imshow(data, cmap="magma" if name == "|error|" else "gray", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def run_demo(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    studies = [s for s in demo_studies(out) if s.has([*INPUTS, TARGET])]
    if not studies:
        raise ValueError("no demo study with T1, T2 and FLAIR")
    study = studies[0]
    path, checkpoint = weights.find("linear", TARGET, INPUTS)
    print(f"study {study.id}: synthesising {TARGET} from {'+'.join(INPUTS)} with {path.name}", flush=True)
    started = time.time()
    images = {c: read_image(study.images[c]) for c in INPUTS}
    brain = read_image(study.brain_mask) if study.brain_mask else None
    synthetic = pipeline.synthesize(checkpoint, images, TARGET, brain_mask=brain)
    seconds = time.time() - started
    nifti = write_image(synthetic, out / f"{study.id.replace('/', '_')}_FLAIR_synthetic.nii.gz",
                        pipeline.provenance_for(checkpoint, INPUTS, TARGET))
    rows = pipeline.evaluate(checkpoint, [study], TARGET, INPUTS, progress=False)
    metrics = {k: round(v, 4) for k, v in rows[0].items() if isinstance(v, float)}
    to_xyz = lambda img: sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # noqa: E731
    acquired = to_xyz(read_image(study.images[TARGET]))
    shown = {c: to_xyz(images[c]) for c in INPUTS} | {TARGET: acquired, f"{TARGET} synthetic": to_xyz(synthetic)}
    scale = np.percentile(acquired[acquired > 0], 99) / np.percentile(shown[f"{TARGET} synthetic"][acquired > 0], 99)
    figure = montage(shown, np.abs(acquired - shown[f"{TARGET} synthetic"] * scale), out / "demo_montage.png",
                     f"{study.id}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} (normalised, in brain)")
    report = {"study": study.id, "weights": str(path), "synthetic": str(nifti), "montage": str(figure),
              "metrics": metrics, "seconds": round(seconds, 2)}
    (out / "demo_metrics.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report
