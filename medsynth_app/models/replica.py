"""replica: REPLICA-style regression forest (Jog et al., MedIA 2017) on multi-scale intensity features.

Features (`medsynth_app.baselines.replica_features`) per voxel and per input contrast: its 3x3x3 patch, the intensity
Gaussian-smoothed at 1, 2, 4 mm, mean and standard deviation in windows of half-width 1, 2, 4 mm, context samples
(smoothed with sigma d/2, taken d = 4, 8, 16 mm away along +-x, +-y, +-z), then 3 coordinates of the prepared grid
in [-1, 1]. Any number of inputs (57 features for one, 111 for two). Extremely randomised trees (scikit-learn) fitted
on a random sample of brain voxels drawn evenly from the training subjects.

The forest goes into the checkpoint as a uint8 tensor holding its zlib-compressed pickle, so the checkpoint still
loads with ``torch.load(weights_only=True)``; the pickle is read only in `load_state_dict`, by an unpickler that
accepts nothing but scikit-learn, NumPy and a few builtins (a checkpoint from an untrusted source still should not be
loaded: the classes it may name are restricted, not their arguments). The forest's size is capped by ``n_estimators``,
``min_samples_leaf`` and ``max_depth``; ``fit`` reports the compressed size.
"""
from __future__ import annotations

import io
import pickle
import time
import zlib

import numpy as np
import torch

from ..baselines import ReplicaForest, replica_features
from ..preprocessing import PreparedSubject
from .base import SynthesisModel, TrainSettings, register
from ..task import join

_ALLOWED_MODULES = ("sklearn.", "numpy", "scipy.")
_ALLOWED_BUILTINS = {"slice", "tuple", "list", "dict", "set", "frozenset", "int", "float", "complex", "bytearray"}


class _ForestUnpickler(pickle.Unpickler):
    """Unpickles scikit-learn estimators and NumPy arrays only."""

    def find_class(self, module: str, name: str):
        if module.startswith(_ALLOWED_MODULES) or (module == "builtins" and name in _ALLOWED_BUILTINS):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"replica checkpoint: forbidden class {module}.{name} in the pickled forest")


def forest_to_tensor(model) -> torch.Tensor:
    return torch.frombuffer(bytearray(zlib.compress(pickle.dumps(model, protocol=4), 6)), dtype=torch.uint8)


def forest_from_tensor(tensor: torch.Tensor):
    data = zlib.decompress(tensor.numpy().tobytes())
    return _ForestUnpickler(io.BytesIO(data)).load()


@register
class ReplicaModel(SynthesisModel):
    """target(v) = mean over trees of the leaf value reached by the features of v (ExtraTreesRegressor); one forest
    per target contrast. Hyperparameters: n_estimators 30, min_samples_leaf 10, max_depth 20, max_features 1/3,
    max_samples 200000 training voxels in all, smoothing/window/context scales in mm."""

    family = "replica"
    description = "REPLICA-style extra-trees regression on multi-scale intensity features (Jog et al. 2017)"

    def __init__(self, inputs, targets, n_estimators: int = 30, min_samples_leaf: int = 10, max_depth: int | None = 20,
                 max_features: float = 1 / 3, max_samples: int = 200_000,
                 smoothing_mm=(1.0, 2.0, 4.0), window_mm=(1.0, 2.0, 4.0), context_mm=(4.0, 8.0, 16.0)):
        super().__init__(inputs, targets, n_estimators=int(n_estimators), min_samples_leaf=int(min_samples_leaf),
                         max_depth=None if max_depth is None else int(max_depth), max_features=float(max_features),
                         max_samples=int(max_samples), smoothing_mm=[float(v) for v in smoothing_mm],
                         window_mm=[float(v) for v in window_mm], context_mm=[float(v) for v in context_mm])
        self.forests: dict[str, ReplicaForest] = {}

    def _features(self, subject: PreparedSubject) -> np.ndarray:
        missing = [c for c in self.inputs if c not in subject.images]
        if missing:
            raise ValueError(f"replica: subject {subject.id} lacks {join(missing)}")
        hp = self.hparams
        return replica_features([subject.images[c] for c in self.inputs], subject.mask, subject.spacing,
                                hp["smoothing_mm"], hp["window_mm"], hp["context_mm"])

    def _forest(self, seed: int) -> ReplicaForest:
        hp = self.hparams
        return ReplicaForest(n_estimators=hp["n_estimators"], min_samples_leaf=hp["min_samples_leaf"],
                             max_depth=hp["max_depth"], max_features=hp["max_features"], n_jobs=-1,
                             random_state=seed)

    def fit(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        if not train:
            raise ValueError("replica: no training subject")
        started = time.time()
        rng = np.random.default_rng(settings.seed)
        per_subject = max(1, self.hparams["max_samples"] // len(train))
        features, values = [], {t: [] for t in self.targets}
        for subject in train:  # keep only the sampled rows of each subject's (N, F) feature matrix
            rows = np.sort(rng.permutation(int(subject.mask.sum()))[:per_subject])
            features.append(self._features(subject)[rows])
            for target in self.targets:
                if target not in subject.images:
                    raise ValueError(f"replica: training subject {subject.id} lacks {target}")
                values[target].append(subject.images[target][subject.mask][rows])
        features = np.concatenate(features)
        summary = {"epochs": 1, "samples": len(features), "features": int(features.shape[1]), "forest_bytes": {}}
        for target in self.targets:
            forest = self._forest(settings.seed).fit(features, np.concatenate(values[target]),
                                                     max_samples=len(features))
            self.forests[target] = forest
            summary["forest_bytes"][target] = int(forest_to_tensor(forest.model).numel())
        summary["train_seconds"] = round(time.time() - started, 1)
        return summary

    def predict(self, subject: PreparedSubject, target: str) -> np.ndarray:
        if target not in self.forests:
            raise ValueError(f"replica: not trained for {target} (trained: {', '.join(self.forests) or 'none'})")
        out = np.zeros(subject.shape, dtype=np.float32)
        out[subject.mask] = self.forests[target].predict(self._features(subject))
        return out

    def predict_spread(self, subject: PreparedSubject, target: str,
                       chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, standard deviation of the trees' predictions): the forest's mean and its spread."""
        if target not in self.forests:
            raise ValueError(f"replica: not trained for {target} (trained: {', '.join(self.forests) or 'none'})")
        features = self._features(subject)
        trees = self.forests[target].model.estimators_
        mean, std = np.zeros(subject.shape, np.float32), np.zeros(subject.shape, np.float32)
        means, stds = [], []
        for start in range(0, len(features), chunk):
            votes = np.stack([tree.predict(features[start:start + chunk]) for tree in trees])
            means.append(votes.mean(axis=0))
            stds.append(votes.std(axis=0))
        mean[subject.mask] = np.concatenate(means)
        std[subject.mask] = np.concatenate(stds)
        return mean, std

    def state_dict(self) -> dict:
        return {f"forest.{t}": forest_to_tensor(f.model) for t, f in self.forests.items()}

    def load_state_dict(self, state: dict) -> None:
        self.forests = {}
        for key, tensor in state.items():
            if key.startswith("forest."):
                forest = self._forest(0)
                forest.model = forest_from_tensor(tensor)
                self.forests[key.split(".", 1)[1]] = forest
