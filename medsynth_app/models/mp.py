"""mp: modality propagation (Ye et al., MICCAI 2013) against atlas subjects stored in the checkpoint.

"Training" keeps up to ``max_atlases`` training subjects: their prepared input and target arrays cropped to the brain
mask's bounding box (the padding of the prepared grid is dropped) and stored as float16 (relative rounding 5e-4, far
below the images' noise), so an atlas costs 2 bytes per voxel and contrast of its brain box. Nothing is downsampled.

Synthesis: every atlas is put on the subject's prepared grid by aligning the brains' bounding boxes (per-axis scale
and shift, trilinear; the same landmark-style correspondence as the lsdn/cdn coordinates, exact for subjects already
in one space such as MNI), then `medsynth_app.baselines.modality_propagation` finds, for every brain voxel, the k
atlas voxels within +-search_radius whose (2 patch_radius + 1)^3 input patches (all inputs, sum of squared
differences) are nearest, and averages their target intensities. Exact search, vectorised over voxels.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from scipy import ndimage

from ..baselines import modality_propagation
from ..preprocessing import PreparedSubject
from .base import SynthesisModel, TrainSettings, register
from .lsdn import bounding_box
from ..task import join


def align_boxes(volume: np.ndarray, subject_mask: np.ndarray) -> np.ndarray:
    """`volume`, an array covering exactly its brain's bounding box, resampled (linear, 0 outside) onto the grid of
    `subject_mask` so that its box lands on the subject brain's bounding box."""
    first, last = bounding_box(subject_mask)
    scale = (np.asarray(volume.shape) - 1) / np.maximum(last - first, 1)
    return ndimage.affine_transform(volume.astype(np.float32), scale, offset=-first * scale,
                                    output_shape=subject_mask.shape, order=1, mode="constant", cval=0.0)


@register
class ModalityPropagationModel(SynthesisModel):
    """synthetic(v) = mean of the target intensities of the k nearest atlas patches (module docstring).
    Hyperparameters: k 5, patch_radius 1 (3x3x3), search_radius 2 (5x5x5 window), max_atlases 4."""

    family = "mp"
    description = "Modality propagation: k nearest atlas patches in a local search window (Ye et al. 2013)"

    def __init__(self, inputs, targets, k: int = 5, patch_radius: int = 1, search_radius: int = 2,
                 max_atlases: int = 4):
        if min(int(k), int(max_atlases)) < 1 or int(patch_radius) < 0 or int(search_radius) < 0:
            raise ValueError("mp: k and max_atlases must be >= 1, patch_radius and search_radius >= 0")
        super().__init__(inputs, targets, k=int(k), patch_radius=int(patch_radius),
                         search_radius=int(search_radius), max_atlases=int(max_atlases))
        self.atlases: list[dict[str, np.ndarray]] = []  # contrast -> float16 brain-box array

    def fit(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        if not train:
            raise ValueError("mp: no training subject")
        started = time.time()
        chosen = [train[i] for i in
                  np.sort(np.random.default_rng(settings.seed).permutation(len(train))[:self.hparams["max_atlases"]])]
        self.atlases = []
        for subject in chosen:
            missing = [c for c in [*self.inputs, *self.targets] if c not in subject.images]
            if missing:
                raise ValueError(f"mp: training subject {subject.id} lacks {join(missing)}")
            first, last = bounding_box(subject.mask)
            box = tuple(slice(a, b + 1) for a, b in zip(first, last))
            self.atlases.append({c: subject.images[c][box].astype(np.float16) for c in [*self.inputs, *self.targets]})
        return {"epochs": 0, "atlases": [s.id for s in chosen],
                "atlas_bytes": int(sum(v.nbytes for a in self.atlases for v in a.values())),
                "train_seconds": round(time.time() - started, 1)}

    def predict(self, subject: PreparedSubject, target: str) -> np.ndarray:
        if not self.atlases or target not in self.atlases[0]:
            raise ValueError(f"mp: no atlas holds {target}")
        missing = [c for c in self.inputs if c not in subject.images]
        if missing:
            raise ValueError(f"mp: subject {subject.id} lacks {join(missing)}")
        atlases = [([align_boxes(a[c], subject.mask) for c in self.inputs], align_boxes(a[target], subject.mask))
                   for a in self.atlases]
        hp = self.hparams
        values = modality_propagation([subject.images[c] for c in self.inputs], subject.mask, atlases,
                                      patch_radius=hp["patch_radius"], search_radius=hp["search_radius"],
                                      k=hp["k"])
        out = np.zeros(subject.shape, dtype=np.float32)
        out[subject.mask] = values
        return out

    def state_dict(self) -> dict:
        state = {"n_atlases": len(self.atlases)}
        for i, atlas in enumerate(self.atlases):
            for contrast, volume in atlas.items():
                state[f"atlas{i}.{contrast}"] = torch.from_numpy(np.ascontiguousarray(volume))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.atlases = [{} for _ in range(int(state.get("n_atlases", 0)))]
        for key, tensor in state.items():
            if key.startswith("atlas"):
                index, contrast = key[len("atlas"):].split(".", 1)
                self.atlases[int(index)][contrast] = tensor.numpy()
