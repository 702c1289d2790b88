"""Benchmark figures (matplotlib, PNG): a montage per task and box plots of PSNR and SSIM per model."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medsynth_app.task import Task  # noqa: E402

from .plan import Entry  # noqa: E402


def _show(ax, image: np.ndarray, vmax: float, cmap: str = "gray"):
    shown = ax.imshow(np.rot90(image), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def montage(task: Task, slices: Path, entries: list[Entry], path: Path) -> Path | None:
    """Per figure subject (one per cohort) two rows: inputs, acquired target and every model's prediction on the
    target's grey scale; below each prediction its absolute error, every error map on one colour scale."""
    available = [e for e in entries if (slices / e.slug).is_dir()]
    subjects = sorted({p.stem for e in available for p in (slices / e.slug).glob("*.npz")})
    if not subjects:
        return None
    data = {(s, e.name): dict(np.load(slices / e.slug / f"{s}.npz")) for s in subjects for e in available
            if (slices / e.slug / f"{s}.npz").exists()}
    errors = [np.abs(d["prediction"] - d["target"])[d["mask"] > 0] for d in data.values()]
    error_max = float(np.percentile(np.concatenate(errors), 99)) or 1.0
    columns = len(task.inputs) + 1 + len(available)
    fig, axes = plt.subplots(2 * len(subjects), columns, figsize=(1.7 * columns, 3.6 * len(subjects)), squeeze=False)
    error_image = None
    for row, subject in enumerate(subjects):
        first = next(d for (s, _), d in data.items() if s == subject)
        grey = float(np.percentile(first["target"][first["mask"] > 0], 99.5))
        top, bottom = axes[2 * row], axes[2 * row + 1]
        panels = [(c, first[f"input_{c}"]) for c in task.inputs] + [(f"{task.target} acquired", first["target"])]
        for col, (title, image) in enumerate(panels):
            _show(top[col], image, float(np.percentile(image[first["mask"] > 0], 99.5)) if col < len(task.inputs)
                  else grey)
            top[col].set_title(title, fontsize=8)
            bottom[col].axis("off")
        top[0].set_ylabel(subject.replace("__", "/").split("/", 1)[-1], fontsize=7)
        for col, entry in enumerate(available, start=len(panels)):
            d = data.get((subject, entry.name))
            if d is None:
                top[col].axis("off")
                bottom[col].axis("off")
                continue
            _show(top[col], d["prediction"] * (d["mask"] > 0), grey)
            top[col].set_title(textwrap.fill(entry.name, 18), fontsize=7)  # long names break at hyphens
            error_image = _show(bottom[col], np.abs(d["prediction"] - d["target"]) * (d["mask"] > 0), error_max,
                                "magma")
    if error_image is not None:
        fig.colorbar(error_image, ax=axes.ravel().tolist(), shrink=0.3, label="|prediction - acquired| (normalised)")
    fig.suptitle(f"{task.name}: test subjects of the folds (normalised intensities, brain mask)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def box_plots(task: Task, results: dict[str, dict], path: Path) -> Path:
    """PSNR and SSIM per test subject, one box per model with the subjects drawn as points."""
    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.1 * len(names) + 2), 3.8))
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        values = [[r[metric] for r in results[n]["rows"] if metric in r] for n in names]
        ax.boxplot(values, showfliers=False)
        for i, v in enumerate(values, start=1):
            ax.plot(np.full(len(v), i) + np.linspace(-0.12, 0.12, len(v)), v, ".", color="tab:blue", alpha=0.6)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{task.name}: per test subject, three folds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
