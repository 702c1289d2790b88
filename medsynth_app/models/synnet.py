"""synnet: the SynNet encoder-decoder (index unpooling, long skips) in its SISO / MISO / MIMO variants, chosen from
the number of inputs (one encoder arm each) and targets (one decoder arm each).

Network: `medsynth_app.networks.synnet.SynNet`; cost: `medsynth_app.losses.SynNetJointLoss` with ``loss`` = "joint"
(10 x edge-weighted L2 + 5 x (1 - SSIM) + 0.5 x TV, the paper's default), "l2" or "weighted_l2". Optimiser per the
paper (NOTES.md): SGD lr 0.01, momentum 0.9, weight decay 1e-4 (the lambda4 of its eq. 6), batch 32 (pass
``--batch-size 32``; the engine uses TrainSettings.batch_size). ``optimizer=adam`` (lr 1e-3 default) is offered for
short CPU runs. Whole 2-D axial slices of mean-normalised volumes (``crop``: brain-centred square windows of them,
the CPU schedule); early stopping on the validation mean PSNR.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..losses import SYNNET_LOSSES, SynNetJointLoss
from ..networks.synnet import SynNet
from ..preprocessing import PreparedSubject
from ..training.common import learning_rate, validation_scores
from ..training.datasets import SliceDataset
from ..training.engine import seed_everything, train_network
from ..training.inference import predict_slices
from ..training.network_weights import NetworkWeights
from ..training.schedule import resumable_hparams
from .base import SynthesisModel, TrainSettings, register
from ..task import join

OPTIMIZERS = {"sgd": 0.01, "adam": 1e-3}  # default learning rates


@register
class SynNetModel(NetworkWeights, SynthesisModel):
    """SynNet SISO / MISO / MIMO (module docstring)."""

    family = "synnet"
    description = "Encoder-decoder with index unpooling, SISO/MISO/MIMO, joint L2+SSIM+TV loss (SynNet)"

    def __init__(self, inputs: Sequence[str], targets: Sequence[str], loss: str = "joint", features: int = 64,
                 depth: int = 4, optimizer: str = "adam", momentum: float = 0.9, weight_decay: float = 1e-4,
                 l2_weight: float = 10.0, ssim_weight: float = 5.0, tv_weight: float = 0.5,
                 edge_weight: float = 10.0, min_brain: float = 0.1, crop: int | None = None,
                 inference_batch: int = 16):
        if loss not in SYNNET_LOSSES:
            raise ValueError(f"synnet: loss must be one of {', '.join(SYNNET_LOSSES)}, not {loss!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"synnet: optimizer must be one of {', '.join(OPTIMIZERS)}, not {optimizer!r}")
        super().__init__(inputs, targets, loss=loss, features=int(features), depth=int(depth), optimizer=optimizer,
                         momentum=float(momentum), weight_decay=float(weight_decay), l2_weight=float(l2_weight),
                         ssim_weight=float(ssim_weight), tv_weight=float(tv_weight), edge_weight=float(edge_weight),
                         min_brain=float(min_brain), crop=None if crop is None else int(crop),
                         inference_batch=int(inference_batch))
        self.device = "auto"
        self.net = self._build()

    @property
    def variant(self) -> str:
        return "MIMO" if len(self.targets) > 1 else "MISO" if len(self.inputs) > 1 else "SISO"

    def _build(self) -> SynNet:
        return SynNet(len(self.inputs), len(self.targets), self.hparams["features"], self.hparams["depth"])

    def fit(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        if not train:
            raise ValueError("synnet: no training subject")
        hp = self.hparams
        seed_everything(settings.seed)
        self.net = self._initial_network(settings)
        n_in = len(self.inputs)
        dataset = SliceDataset(train, [*self.inputs, *self.targets], (2,), hp["min_brain"], crop=hp["crop"])
        cost = SynNetJointLoss(hp["loss"], hp["l2_weight"], hp["ssim_weight"], hp["tv_weight"], hp["edge_weight"])

        def loss(net, batch, device):
            x = batch.to(device, non_blocking=True)
            return cost(net(x[:, :n_in]), x[:, n_in:])

        options = ({"momentum": hp["momentum"], "weight_decay": hp["weight_decay"]} if hp["optimizer"] == "sgd"
                   else {"weight_decay": hp["weight_decay"]})
        summary = train_network(
            self.net, dataset, loss, settings,
            identity={"family": self.family, "inputs": list(self.inputs), "targets": list(self.targets),
                      "hparams": resumable_hparams(self.recorded_hparams(), self.finishing_hparams)},
            lr=learning_rate(settings, OPTIMIZERS[hp["optimizer"]]), optimizer=hp["optimizer"],
            optimizer_options=options,
            validate=(lambda: validation_scores(self.predict, validation, self.targets)) if validation else None,
            schedule=self.schedule)
        summary.update(variant=self.variant, loss=hp["loss"], slice_size=list(dataset.size),
                       validation_metric="mean PSNR" if validation else "training loss (no validation subject)")
        return summary

    def predict(self, subject: PreparedSubject, target: str) -> np.ndarray:
        if target not in self.targets:
            raise ValueError(f"synnet: not trained for {target} (trained: {', '.join(self.targets)})")
        missing = [c for c in self.inputs if c not in subject.images]
        if missing:
            raise ValueError(f"synnet: subject {subject.id} lacks {join(missing)}")
        net, device, dtype = self._for_inference()
        out = predict_slices(net, [subject.images[c] for c in self.inputs], 2, device, self.hparams["inference_batch"],
                             dtype=dtype)[self.targets.index(target)]
        return np.where(subject.mask, out, 0).astype(np.float32)
