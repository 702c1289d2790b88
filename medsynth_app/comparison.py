"""A synthetic volume against the acquired one of its study: EVALUATION.md metrics and a PNG montage, both on the
normalised volumes inside the brain mask."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from .imageio import read_image  # noqa: E402
from .pipeline import score_subject  # noqa: E402
from .preprocessing import PreparedSubject, prepare  # noqa: E402
from .studies import Study  # noqa: E402

SYNTHETIC = "synthetic"


def prepare_comparison(study: Study, synthetic: sitk.Image, target: str, inputs: Sequence[str]) -> PreparedSubject:
    """The study's inputs and acquired ``target`` plus ``synthetic`` (under the key SYNTHETIC) on the grid of the
    first input, each mean-normalised inside the study's brain mask (automatic from inputs and target without one)."""
    contrasts = [*inputs, target]
    images = {c: read_image(study.images[c]) for c in contrasts} | {SYNTHETIC: synthetic}
    return prepare(images, inputs[0],
                   brain_mask=read_image(study.brain_mask, mask=True) if study.brain_mask else None,
                   lesion_mask=read_image(study.lesion_mask, mask=True) if study.lesion_mask else None,
                   mask_from=tuple(contrasts), normalisation="mean", subject_id=study.id)


def score(subject: PreparedSubject, target: str) -> dict[str, float]:
    return score_subject(subject.images[SYNTHETIC], subject, target)


def montage(subject: PreparedSubject, target: str, inputs: Sequence[str], path: Path, title: str) -> Path:
    """Middle axial slice of the inputs, the acquired and the synthetic target in one row, plus the absolute error
    on its own colour scale."""
    acquired, synthetic = subject.images[target], subject.images[SYNTHETIC]
    panels = [*((c, subject.images[c]) for c in inputs), (target, acquired), (f"{target} synthetic", synthetic),
              ("|error|", np.abs(acquired - synthetic))]
    k = subject.shape[2] // 2
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
    for ax, (name, volume) in zip(axes, panels):
        vmax = np.percentile(volume[volume > 0], 99.5) if (volume > 0).any() else 1
        ax.imshow(np.rot90(volume[:, :, k]), cmap="magma" if name == "|error|" else "gray", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
