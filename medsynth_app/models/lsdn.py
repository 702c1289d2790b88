"""lsdn, vdn, cdn: the voxel-wise networks of Nguyen, Zhou & Vemulapalli (MICCAI 2015) as synthesis families.

Per voxel v the features are the 3x3x3 patches of every input contrast (27 values each, in the order of `inputs`,
edge-replicated at the grid border) and, for lsdn and cdn, three spatial coordinates:

    x(v) = 2 (v - b0) / (b1 - b0) - 1   per axis, with [b0, b1] the bounding box of the subject's brain mask
                                        (canonical RAS+ voxel axes; 0 on an axis where the box is one voxel wide)

The paper registers every subject rigidly to a reference so that x means the same anatomy everywhere; it names
coordinates relative to landmarks as the registration-free alternative. Our subjects come from different spaces
(MNI, BraTS/SRI24, native clinical grids) and `prepare()` already puts every one in RAS+ order cropped to its brain,
so the brain's bounding box is the landmark set: x is equivalent to aligning the brains' bounding boxes by a per-axis
scale and shift (9 degrees of freedom less rotation). It costs nothing at synthesis time and does not depend on the
voxel size. It does not undo head rotation (about 5-10 degrees in clinical scans); sigma = 0.5 in [-1, 1]^3 is a
broad spatial receptive field (a quarter of the box) so a few millimetres of misalignment matter little.

Networks, training and ShrinkConnect are `medsynth_app.networks.lsdn` and `medsynth_app.networks.shrinkconnect`:
sigmoid layers everywhere (targets mapped into [0.1, 0.9] by `TargetScaling`), plain SGD on eq. (1), per-sample
learning rate 0.25 (batch steps of B voxels use 0.25 B) times 0.99 after every epoch. Every epoch draws a fresh random
sample of brain voxels from every training subject. See docs/lsdn_and_baselines.md.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time

import numpy as np
import torch

from ..networks.lsdn import LocationSensitiveNet, TargetScaling, VanillaDeepNet, loss, predict, train_lsdn
from ..networks.shrinkconnect import shrink, shrink_connect
from ..patches import patch_windows
from ..preprocessing import PreparedSubject
from .base import SynthesisModel, TrainSettings, register
from ..task import join

logger = logging.getLogger(__name__)

VARIANTS = {"LSDN-1": (200, 20), "LSDN-2": (400, 40)}
PREDICT_CHUNK = 262144  # voxels whose features are gathered at once when synthesizing (27 floats each per input)


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) voxel index of the mask's bounding box per axis, inclusive."""
    index = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if any(len(i) == 0 for i in index):
        raise ValueError("empty brain mask")
    return np.array([i[0] for i in index]), np.array([i[-1] for i in index])


def box_coordinates(index: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, 3) float32 coordinates of voxel indices (N, 3) mapped from the mask's bounding box to [-1, 1] per axis."""
    first, last = bounding_box(mask)
    extent = np.maximum(last - first, 1).astype(np.float32)
    coords = 2 * (index.astype(np.float32) - first) / extent - 1
    return np.where(last > first, coords, 0).astype(np.float32)


@contextlib.contextmanager
def single_thread():
    """Run small-batch SGD on one torch thread: with batches of 100 voxels the OpenMP threads only synchronise
    (docs/deep_models.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def multiply_adds(sizes) -> int:
    """Multiply-adds per voxel of a network [p_1, ..., p_K] (LSDN: p_1 includes the 3 coordinates, whose spatial
    term costs p_x p_2 like a linear layer; Sect. 4's O(p_s p_2 + p_x p_2 + sum p_(k-1) p_k))."""
    return int(sum(a * b for a, b in zip(sizes[:-1], sizes[1:])))


def voxel_features(windows: list[np.ndarray], index: np.ndarray) -> np.ndarray:
    """(N, 27 C) patches of the voxels `index` (N, 3), gathered from `patch_windows` views of the C inputs."""
    i, j, k = index.T
    return np.concatenate([w[i, j, k].reshape(len(index), -1) for w in windows], axis=1)


class _VoxelNetwork(SynthesisModel):
    """Shared training and synthesis of the three voxel-wise networks; one network per target contrast."""

    uses_coordinates: bool
    location_sensitive: bool
    default_hidden: tuple[int, ...]
    default_shrink: bool

    def __init__(self, inputs, targets, hidden: list[int] | tuple[int, ...] | None = None, sigma: float = 0.5,
                 lr: float = 0.25, decay: float = 0.99, epochs: int | None = None,
                 voxels_per_subject: int = 50_000, batch_size: int = 20, shrink: bool | None = None,
                 shrink_tolerance: float = 0.02, retrain_epochs: int = 10, shrink_samples: int = 30_000,
                 shrink_mode: str = "per_layer", **extra):
        if shrink_mode not in ("per_layer", "uniform"):
            raise ValueError(f"{self.family}: shrink_mode must be 'per_layer' or 'uniform', not {shrink_mode!r}")
        hidden = tuple(int(h) for h in (hidden or self.default_hidden))
        if len(hidden) < 1 or min(hidden) < 1:
            raise ValueError(f"{self.family}: hidden layer sizes {hidden} must be positive")
        super().__init__(inputs, targets, hidden=list(hidden), sigma=float(sigma), lr=float(lr), decay=float(decay),
                         epochs=None if epochs is None else int(epochs), voxels_per_subject=int(voxels_per_subject),
                         batch_size=int(batch_size),
                         shrink=self.default_shrink if shrink is None else bool(shrink),
                         shrink_tolerance=float(shrink_tolerance), retrain_epochs=int(retrain_epochs),
                         shrink_samples=int(shrink_samples), shrink_mode=shrink_mode, **extra)
        self.nets: dict[str, LocationSensitiveNet | VanillaDeepNet] = {}
        self.scalings: dict[str, TargetScaling] = {}

    # -- features -------------------------------------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return 27 * len(self.inputs) + (3 if self.uses_coordinates else 0)

    def _sizes(self) -> tuple[int, ...]:
        return (self.n_inputs, *self.hparams["hidden"], 1)

    def _new_net(self, sizes) -> LocationSensitiveNet | VanillaDeepNet:
        if self.location_sensitive:
            return LocationSensitiveNet(sizes, n_coords=3, sigma=self.hparams["sigma"])
        return VanillaDeepNet(sizes)

    def _tensors(self, subject: PreparedSubject, windows: list[np.ndarray], index: np.ndarray
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(s, x) for train_lsdn / predict: x separate for lsdn, concatenated into s for cdn, None for vdn/cdn."""
        s = voxel_features(windows, index)
        if not self.uses_coordinates:
            return torch.from_numpy(s), None
        x = box_coordinates(index, subject.mask)
        if self.location_sensitive:
            return torch.from_numpy(s), torch.from_numpy(x)
        return torch.from_numpy(np.concatenate([s, x], axis=1)), None

    def _windows(self, subject: PreparedSubject) -> list[np.ndarray]:
        missing = [c for c in self.inputs if c not in subject.images]
        if missing:
            raise ValueError(f"{self.family}: subject {subject.id} lacks {join(missing)}")
        return [patch_windows(subject.images[c], 1) for c in self.inputs]

    def _sample(self, subjects, windows, target: str, per_subject: int, rng: np.random.Generator):
        """A random sample of brain voxels of every subject: (s, x, raw target) tensors."""
        parts_s, parts_x, parts_t = [], [], []
        for subject, win in zip(subjects, windows):
            index = np.argwhere(subject.mask)
            if len(index) > per_subject:
                index = index[np.sort(rng.choice(len(index), per_subject, replace=False))]
            s, x = self._tensors(subject, win, index)
            parts_s.append(s)
            parts_x.append(x)
            parts_t.append(torch.from_numpy(subject.images[target][tuple(index.T)].astype(np.float32)))
        x = None if parts_x[0] is None else torch.cat(parts_x)
        return torch.cat(parts_s), x, torch.cat(parts_t)

    # -- training -------------------------------------------------------------------------------------------------
    def fit(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        with single_thread():
            return self._fit(train, settings)

    def _fit(self, train: list[PreparedSubject], settings: TrainSettings) -> dict:
        if not train:
            raise ValueError(f"{self.family}: no training subject")
        hp = self.hparams
        epochs = hp["epochs"] if hp["epochs"] is not None else settings.epochs
        # The paper's rate 0.25 is per sample (its gradients are derived for one sample, eq. 1 averaged over N only
        # in the objective): a step on the mean loss of a batch of B voxels is taken with B x 0.25, which equals B
        # per-sample steps taken at one point; 0.25 on the batch mean leaves LSDN-1 near the mean predictor.
        lr = (settings.learning_rate if settings.learning_rate is not None else hp["lr"]) * hp["batch_size"]
        torch.manual_seed(settings.seed)
        rng = np.random.default_rng(settings.seed)
        windows = [self._windows(s) for s in train]
        summary: dict = {"epochs": epochs, "learning_rate_per_batch": lr, "batch_size": hp["batch_size"], "voxels_per_epoch": 0, "targets": {}}
        started = time.time()
        for target in self.targets:
            missing = [s.id for s in train if target not in s.images]
            if missing:
                raise ValueError(f"{self.family}: training subjects {', '.join(missing)} lack {target}")
            values = np.concatenate([s.images[target][s.mask] for s in train])
            # min .. 99.9th percentile: a handful of very bright voxels (vessels, artefacts) would otherwise squeeze
            # the bulk of the tissue into a small part of the sigmoid's range; brighter targets are clipped to 0.9.
            scaling = TargetScaling(float(values.min()), float(np.percentile(values, 99.9)))
            if not scaling.high > scaling.low:
                raise ValueError(f"{self.family}: {target} is constant in the training data")
            net = self._new_net(self._sizes())
            s, x, t = self._sample(train, windows, target, hp["voxels_per_subject"], rng)
            if self.location_sensitive:
                net.place_centres_on(x, torch.Generator().manual_seed(settings.seed))
            summary["voxels_per_epoch"] = len(s)
            history = []
            for epoch in range(epochs):
                if epoch:
                    s, x, t = self._sample(train, windows, target, hp["voxels_per_subject"], rng)
                # One epoch of train_lsdn with the learning rate it would have after `epoch` decays (plain SGD keeps
                # no state between epochs, so this is the paper's schedule on a fresh voxel sample every epoch).
                history += train_lsdn(net, s, x, self._encode(scaling, t), epochs=1, lr=lr * hp["decay"] ** epoch,
                                      decay=hp["decay"], batch_size=hp["batch_size"], seed=settings.seed + epoch)
                stop = settings.on_epoch({"epoch": epoch + 1, "total_epochs": epochs, "best_metric": -history[-1],
                                          "loss": history[-1], "target": target}) if settings.on_epoch else None
                if settings.progress:
                    logger.info("%s %s epoch %d/%d loss %.5f", self.family, target, epoch + 1, epochs, history[-1])
                if stop:
                    break
            report = {"loss": [round(h, 6) for h in history], "sizes": list(net.sizes)}
            if hp["shrink"]:
                net, report["shrink_connect"] = self._shrink(net, train, windows, target, scaling, rng, lr,
                                                             len(history), settings.seed)
                report["sizes"] = list(net.sizes)
            self.nets[target], self.scalings[target] = net, scaling
            summary["targets"][target] = report
        summary["train_seconds"] = round(time.time() - started, 1)
        return summary

    @staticmethod
    def _encode(scaling: TargetScaling, t: torch.Tensor) -> torch.Tensor:
        return scaling.encode(t).clamp(0.0, 1.0)

    def _shrink(self, net, train, windows, target, scaling, rng, lr, epochs_done, seed):
        """ShrinkConnect (Sect. 3) judged on a fresh training sample, then `retrain_epochs` epochs continuing the lr
        schedule. Two sweeps, both keeping the training error (eq. 1) within `shrink_tolerance` of the original's:
        the paper's, one fraction 10..90 % for every hidden layer (`shrink_connect`), and, with shrink_mode
        "per_layer" (default), a greedy one choosing the smallest fraction layer by layer (k = 2, ..., K-1, each
        given the layers already shrunk below it). The network with fewer multiply-adds per voxel wins."""
        hp = self.hparams
        per_subject = max(1, hp["shrink_samples"] // len(train))
        s, x, t = self._sample(train, windows, target, per_subject, rng)
        t = self._encode(scaling, t)
        tolerance = hp["shrink_tolerance"]
        fractions = tuple(f / 10 for f in range(1, 10))
        uniform, report = shrink_connect(net, s, x, t, fractions=fractions, tolerance=tolerance)
        error_before = report.error_before
        candidates = {}
        if report.fraction is not None:
            candidates["uniform"] = (uniform, report.error_after, [report.fraction] * (len(net.sizes) - 2))
        greedy_sweep = []
        if hp["shrink_mode"] == "per_layer":
            chosen, chosen_net, chosen_error = [1.0] * (len(net.sizes) - 2), None, error_before
            for layer in range(len(chosen)):
                for fraction in fractions:
                    trial = [*chosen[:layer], fraction, *chosen[layer + 1:]]
                    candidate = shrink(net, s, x, trial)
                    error = float(loss(predict(candidate, s, x), t))
                    greedy_sweep.append({"fractions": trial, "sizes": list(candidate.sizes), "error": error})
                    if error <= (1 + tolerance) * error_before:
                        chosen, chosen_net, chosen_error = trial, candidate, error
                        break
            if chosen_net is not None:
                candidates["per_layer"] = (chosen_net, chosen_error, chosen)
        if candidates:
            mode = min(candidates, key=lambda name: multiply_adds(candidates[name][0].sizes))
            small, error_after, chosen = candidates[mode]
        else:
            mode, small, error_after, chosen = None, copy.deepcopy(net), error_before, [1.0] * (len(net.sizes) - 2)
        retrain = []
        if mode is not None:
            for epoch in range(hp["retrain_epochs"]):
                rs, rx, rt = self._sample(train, windows, target, hp["voxels_per_subject"], rng)
                retrain += train_lsdn(small, rs, rx, self._encode(scaling, rt), epochs=1,
                                      lr=lr * hp["decay"] ** (epochs_done + epoch), decay=hp["decay"],
                                      batch_size=hp["batch_size"], seed=seed + 1000 + epoch)
        error_retrained = float(loss(predict(small, s, x), t))
        speed = {}
        for name, model in (("before", net), ("after", small)):
            started = time.perf_counter()
            predict(model, s, x)
            speed[name] = time.perf_counter() - started
        return small, {
            "sizes_before": list(net.sizes), "sizes_after": list(small.sizes), "mode": mode, "fractions": chosen,
            "multiply_adds_before": multiply_adds(net.sizes), "multiply_adds_after": multiply_adds(small.sizes),
            "error_before": error_before, "error_after_shrink": error_after,
            "error_after_retraining": error_retrained,
            "within_tolerance": error_after <= (1 + tolerance) * error_before, "samples": len(s),
            "uniform_sweep": [{"fraction": f, "sizes": list(z), "error": e} for f, z, e in report.sweep],
            "per_layer_sweep": greedy_sweep, "retrain_loss": [round(h, 6) for h in retrain],
            "forward_speedup": round(speed["before"] / max(speed["after"], 1e-9), 2),
        }

    # -- synthesis ------------------------------------------------------------------------------------------------
    def predict(self, subject: PreparedSubject, target: str) -> np.ndarray:
        if target not in self.nets:
            raise ValueError(f"{self.family}: not trained for {target} (trained: {', '.join(self.nets) or 'none'})")
        net, scaling = self.nets[target], self.scalings[target]
        windows = self._windows(subject)
        index = np.argwhere(subject.mask)
        values = np.empty(len(index), dtype=np.float32)
        for start in range(0, len(index), PREDICT_CHUNK):
            part = slice(start, start + PREDICT_CHUNK)
            s, x = self._tensors(subject, windows, index[part])
            values[part] = scaling.decode(predict(net, s, x)[:, 0]).numpy()
        out = np.zeros(subject.shape, dtype=np.float32)
        out[subject.mask] = values  # np.argwhere and boolean indexing share C order
        return out

    # -- checkpoint -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {}
        for target, net in self.nets.items():
            state[f"{target}.sizes"] = torch.tensor(net.sizes, dtype=torch.int64)
            scaling = self.scalings[target]
            state[f"{target}.scaling"] = torch.tensor([scaling.low, scaling.high, scaling.margin], dtype=torch.float64)
            for key, value in net.state_dict().items():
                state[f"{target}.net.{key}"] = value.detach().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.nets, self.scalings = {}, {}
        for target in self.targets:
            if f"{target}.sizes" not in state:
                continue
            net = self._new_net(tuple(int(v) for v in state[f"{target}.sizes"]))
            prefix = f"{target}.net."
            net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            net.eval()
            low, high, margin = (float(v) for v in state[f"{target}.scaling"])
            self.nets[target], self.scalings[target] = net, TargetScaling(low, high, margin)


@register
class LSDNModel(_VoxelNetwork):
    """LSDN (eqs. 1-8): h2 = sigmoid(F2 s + b2) (.) 2 sigmoid(-||x - x_i||^2 / sigma^2), sigmoid layers above, on the
    concatenated 3x3x3 patches s of the inputs and the brain-box coordinates x (module docstring). ``variant`` LSDN-1
    [p-200-20-1] (default) or LSDN-2 [p-400-40-1], p = 27 x inputs + 3; ``hidden`` overrides. ShrinkConnect
    (``shrink``, default on) sweeps 10..90 % of every hidden layer, keeps the smallest network within 2 % of the
    training error and retrains it ``retrain_epochs`` (10) epochs."""

    family = "lsdn"
    description = "Location-sensitive deep network with ShrinkConnect (Nguyen et al. 2015)"
    uses_coordinates = True
    location_sensitive = True
    default_hidden = VARIANTS["LSDN-1"]
    default_shrink = True

    def __init__(self, inputs, targets, variant: str = "LSDN-1", hidden=None, **hparams):
        key = str(variant).upper().replace("LSDN", "").strip("-_ ")
        name = f"LSDN-{key}"
        if name not in VARIANTS:
            raise ValueError(f"lsdn: variant must be LSDN-1 or LSDN-2, not {variant!r}")
        super().__init__(inputs, targets, hidden=hidden or VARIANTS[name], variant=name, **hparams)


@register
class VDNModel(_VoxelNetwork):
    """VDN [27 n-400-40-1]: sigmoid network on the inputs' 3x3x3 patches only (Sect. 4)."""

    family = "vdn"
    description = "Vanilla deep network on 3x3x3 intensity patches (Nguyen et al. 2015 baseline)"
    uses_coordinates = False
    location_sensitive = False
    default_hidden = (400, 40)
    default_shrink = False


@register
class CDNModel(_VoxelNetwork):
    """CDN [27 n+3-400-40-1]: sigmoid network on the patches concatenated with the brain-box coordinates (Sect. 4)."""

    family = "cdn"
    description = "Vanilla deep network on patches concatenated with coordinates (Nguyen et al. 2015 baseline)"
    uses_coordinates = True
    location_sensitive = False
    default_hidden = (400, 40)
    default_shrink = False
