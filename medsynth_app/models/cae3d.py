"""cae3d: the 3-D convolutional autoencoder of Klingelhoefer & Rousseau (valid 3x3x3 convolutions, 32 filters,
3-pool-3-upsample-2 "base" or 4-4-3 "deep" layout, batch norm before hidden convolutions, He initialisation, Adam,
MSE).

Training: output patches of ``patch_output`` (16) voxels per side on a grid of step ``step`` (16), kept when their
centre is in the brain mask, with input patches grown by the receptive-field margin (11 base: 38^3 -> 16^3; 15 deep:
46^3 -> 16^3), as in the paper. Intensities: the prepared arrays are divided by their brain mean (mean 1); the paper
divides by 3 x the mean of the non-zero voxels, so the family divides inputs and targets by ``intensity_scale`` (3)
and multiplies predictions back. Several inputs are stacked as channels; several targets get one autoencoder each,
trained together (sum of MSEs).

Inference: `medsynth_app.training.inference.predict_tiled` pads the prepared volume by the margin and runs input
tiles of (tile + 2 margin)^3 (tile = 32: 54^3 -> 32^3 for base) whose outputs abut exactly: the result equals one
pass over the whole padded volume, without seams; tiles without brain are skipped; ``inference_batch`` tiles per
forward pass.

Beyond the paper (all off by default): ``patch_jitter`` moves every training patch by a random offset of up to that
many voxels per axis, so that each epoch sees new crops (`PatchDataset`): the paper trains on 90 subjects, the
benchmark's folds on 10-12 (3,677-4,498 grid patches, each seen 11-14 times by `cae3d-long`). ``parity_average``
predicts the volume 8 times, shifted by 0 or 1 voxel along each axis, and averages: the 2x2x2 pooling and nearest
upsampling make the output depend on where the pooling grid falls (a 2-voxel pattern), and the average takes that
dependence out (8 times the inference time). ``bn_momentum`` 0.01 is the paper's library's (Keras) moving average.
``input_noise`` adds Gaussian noise of a random level up to that (brain mean 1) to the training input patches (targets
clean): the network otherwise reads the noisier T1 of a study unlike its training ones as anatomy (docs/deep_models.md).
``precise_bn`` > 0 ends the training by recomputing the batch norms' running statistics over that many batches of
clean training patches (`finish`): with ``bn_momentum`` 0.01 they average the last few hundred steps, which trail an
epoch kept before the learning rate has decayed, and the inputs of ``input_noise`` (docs/deep_models.md).
``ssim_weight`` adds that times (1 - 3-D SSIM) of each output patch to the MSE (`PatchMSEWithSSIM`), with the
target's data range taken as the median over the training subjects of EVALUATION.md's per-volume range: an MSE
optimum is the conditional mean, whose local contrast SSIM finds too low where the target holds detail the
inputs do not predict.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..losses import PatchMSEWithSSIM
from ..networks.cae3d import LAYOUTS, ConvAutoencoder3D
from ..preprocessing import PreparedSubject
from ..training.common import learning_rate, recalibrate_batch_norm, typical_data_range, validation_scores
from ..training.datasets import PatchDataset
from ..training.engine import seed_everything, train_network
from ..training.inference import predict_tiled
from ..training.network_weights import NetworkWeights
from ..training.schedule import resumable_hparams
from .base import SynthesisModel, TrainSettings, register
from ..task import join


class PerTargetAutoencoders(nn.Module):
    """One `ConvAutoencoder3D` per target; (B, C_in, n, n, n) -> (B, n_targets, m, m, m)."""

    def __init__(self, targets: Sequence[str], in_channels: int, depth: str, features: int,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.nets = nn.ModuleDict({t: ConvAutoencoder3D(in_channels, depth, features, bn_momentum=bn_momentum)
                                   for t in targets})

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([net(x) for net in self.nets.values()], dim=1)


def margin_for(depth: str, output: int = 16) -> int:
    """Voxels an input patch extends beyond its output patch on each side (11 base, 15 deep)."""
    return (ConvAutoencoder3D.input_size_for(output, depth) - output) // 2


@register
class ConvAutoencoder3DModel(NetworkWeights, SynthesisModel):
    """3-D valid-convolution autoencoder (module docstring)."""

    family = "cae3d"
    finishing_hparams = ("precise_bn",)
    description = "3-D convolutional autoencoder on 38^3 patches, seamless tiled inference (Klingelhoefer & Rousseau)"

    def __init__(self, inputs: Sequence[str], targets: Sequence[str], depth: str = "base", features: int = 32,
                 intensity_scale: float = 3.0, patch_output: int = 16, step: int = 16, tile: int = 32,
                 inference_batch: int = 2, patch_jitter: int = 0,
                 parity_average: bool = False, bn_momentum: float = 0.1, input_noise: float = 0.0,
                 ssim_weight: float = 0.0, precise_bn: int = 0):
        if depth not in LAYOUTS:
            raise ValueError(f"cae3d: depth must be one of {', '.join(LAYOUTS)}, not {depth!r}")
        for name, value in (("patch_output", patch_output), ("tile", tile)):
            if int(value) < 2 or int(value) % 2:
                raise ValueError(f"cae3d: {name} must be even and >= 2, got {value}")
        if (float(intensity_scale) <= 0 or int(step) < 1 or int(patch_jitter) < 0 or float(input_noise) < 0
                or float(ssim_weight) < 0 or int(precise_bn) < 0 or not 0 < float(bn_momentum) <= 1):
            raise ValueError("cae3d: intensity_scale must be > 0, step >= 1, patch_jitter, input_noise, ssim_weight "
                             "and precise_bn >= 0 and bn_momentum in (0, 1]")
        super().__init__(inputs, targets, depth=depth, features=int(features), intensity_scale=float(intensity_scale),
                         patch_output=int(patch_output), step=int(step), tile=int(tile),
                         inference_batch=int(inference_batch), patch_jitter=int(patch_jitter),
                         parity_average=bool(parity_average), bn_momentum=float(bn_momentum),
                         input_noise=float(input_noise), ssim_weight=float(ssim_weight), precise_bn=int(precise_bn))
        self.device = "auto"
        self.net = self._build()

    def _build(self) -> PerTargetAutoencoders:
        return PerTargetAutoencoders(self.targets, len(self.inputs), self.hparams["depth"], self.hparams["features"],
                                     self.hparams["bn_momentum"])

    @property
    def margin(self) -> int:
        return margin_for(self.hparams["depth"], self.hparams["patch_output"])

    def fit(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        if not train:
            raise ValueError("cae3d: no training subject")
        hp = self.hparams
        seed_everything(settings.seed)
        self.net = self._initial_network(settings)
        dataset = PatchDataset(train, self.inputs, self.targets, hp["patch_output"], self.margin, hp["step"],
                               hp["patch_jitter"], hp["input_noise"])
        scale = hp["intensity_scale"]
        cost = PatchMSEWithSSIM([typical_data_range(train, t) / scale for t in self.targets], hp["ssim_weight"])

        def loss(net, batch, device):
            x, y = (t.to(device, non_blocking=True) / scale for t in batch)
            return cost(net(x), y)

        summary = train_network(
            self.net, dataset, loss, settings,
            identity={"family": self.family, "inputs": list(self.inputs), "targets": list(self.targets),
                      "hparams": resumable_hparams(self.recorded_hparams(), self.finishing_hparams)},
            lr=learning_rate(settings, 1e-3), optimizer="adam",  # Keras' Adam defaults (the paper's library)
            validate=(lambda: validation_scores(self.predict, validation, self.targets)) if validation else None,
            schedule=self.schedule)
        summary.update(patch_input=dataset.input_size, patch_output=dataset.output_size,
                       validation_metric="mean PSNR" if validation else "training loss (no validation subject)")
        summary.update(self.finish(train, validation, settings))
        return summary

    def finish(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        """``precise_bn`` > 0: the batch norms' statistics recomputed over that many batches of clean training
        patches (jittered as in training, no input noise; drawn with the run's seed)."""
        hp = self.hparams
        if not hp["precise_bn"]:
            return {}
        started = time.time()
        dataset = PatchDataset(train, self.inputs, self.targets, hp["patch_output"], self.margin, hp["step"],
                               hp["patch_jitter"])

        def clean_inputs():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed)
                loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True)
                for x, _ in itertools.islice(loader, hp["precise_bn"]):
                    yield x / hp["intensity_scale"]

        recalibrate_batch_norm(self.net, clean_inputs())
        return {"precise_bn": {"batches": min(hp["precise_bn"], math.ceil(len(dataset) / settings.batch_size)),
                               "seconds": round(time.time() - started, 1)}}

    def predict_volume(self, volume: np.ndarray, mask: np.ndarray | None = None, tile: int | None = None) -> np.ndarray:
        """(C_in, I, J, K) normalised inputs -> (n_targets, I, J, K), tiled (no masking applied)."""
        net, device, dtype = self._for_inference()
        scale = self.hparams["intensity_scale"]
        tile = int(tile or self.hparams["tile"])
        margin = (ConvAutoencoder3D.input_size_for(tile, self.hparams["depth"]) - tile) // 2
        scaled = volume / scale

        def run(shift: tuple[int, int, int]) -> np.ndarray:
            pad = [(s, 0) for s in shift]
            out = predict_tiled(net, np.pad(scaled, [(0, 0), *pad]), tile, margin, device,
                                self.hparams["inference_batch"], None if mask is None else np.pad(mask, pad), dtype)
            return out[:, shift[0]:, shift[1]:, shift[2]:]

        shifts = list(itertools.product((0, 1), repeat=3)) if self.hparams["parity_average"] else [(0, 0, 0)]
        return sum(run(shift) for shift in shifts) * (scale / len(shifts))

    def predict(self, subject: PreparedSubject, target: str) -> np.ndarray:
        if target not in self.targets:
            raise ValueError(f"cae3d: not trained for {target} (trained: {', '.join(self.targets)})")
        missing = [c for c in self.inputs if c not in subject.images]
        if missing:
            raise ValueError(f"cae3d: subject {subject.id} lacks {join(missing)}")
        volume = np.stack([subject.images[c] for c in self.inputs])
        out = self.predict_volume(volume, subject.mask)[self.targets.index(target)]
        return np.where(subject.mask, out, 0).astype(np.float32)
