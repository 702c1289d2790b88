"""multimodal: Chartsias et al. 2018 latent-fusion synthesis, any non-empty subset of the trained inputs at test time.

Network and cost: `medsynth_app.networks.multimodal.MultimodalSynthesisNet` (one encoder per input, max / mean /
HeMIS / output-mean fusion, one decoder per target) and `medsynth_app.losses.MultimodalSynthesisLoss` (c1 + c2 + c3).
Training (paper Sec. V / authors' code): Adam lr 1e-4, batch 16, whole 2-D axial slices of mean-normalised volumes,
early stopping on validation (here: mean PSNR of whole validation volumes, patience 10).

Beyond the paper:
- ``input_dropout`` p: at every training batch each input is dropped with probability p (at least one is kept), so
  one model serves every subset of its inputs (BraSyn-style). Inputs and targets may overlap (T1,T1C,T2,FLAIR ->
  T1,T1C,T2,FLAIR): a target is never synthesized from itself at prediction time.
- ``axes`` trains on slices along several axes; ``predict_axes`` (default: ``axes``) predicts slice-wise along each
  and averages, e.g. [0, 1, 2] averages the sagittal, coronal and axial predictions (Sec. VI-I shows an axially
  trained model transfers to coronal slices). Both keep, per study, the planes whose two voxel spacings are within
  a factor 2 (`sampled_planes`): a thick-slice axial study trains and predicts axially only.
- ``incomplete_studies``: train on studies that lack some of the contrasts too (any study holding an input and
  another contrast of the model): a slice's missing contrasts are neither encoded nor scored (the network's
  ``present`` flags, the cost's ``available`` flags), so a datastore where T1C or T2 was not always acquired still
  trains every encoder and decoder on all that was.
- A decoder head whose ReLU starts inactive on most brain pixels gets its bias raised before training
  (`_activate_output_heads`): otherwise it can fall silent for good.
- ``ssim_weight`` adds that times 1 - SSIM of the fused prediction to the cost (`MultimodalSynthesisLoss`), each
  target's data range the median over the training subjects of EVALUATION.md's per-volume range: an MAE optimum is
  the conditional median, smoother than the target where it holds detail the inputs do not predict.
- `MultimodalModel.add_output` adds a decoder for a new contrast to a trained model and trains it alone, encoders
  and the other decoders frozen (Sec. VI-E).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..losses import MultimodalSynthesisLoss
from ..networks.multimodal import FUSIONS, MultimodalSynthesisNet
from ..preprocessing import PreparedSubject
from ..training.common import learning_rate, typical_data_range, unique, validation_scores
from ..training.datasets import SliceDataset, sampled_planes
from ..training.engine import seed_everything, train_network
from ..training.inference import predict_slices
from ..training.network_weights import NetworkWeights
from ..training.schedule import resumable_hparams
from .base import SynthesisModel, TrainSettings, register
from ..task import join


def _axes(value) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [part for part in value.replace("+", ",").split(",") if part.strip()]
    if isinstance(value, (int, np.integer)):
        value = [value]
    axes = tuple(int(a) for a in value)
    if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"multimodal: axes must be distinct values among 0, 1, 2 (2 = axial), got {value!r}")
    return axes


def _kept_inputs(count: int, dropout: float) -> torch.Tensor:
    """Which of ``count`` inputs a batch keeps: each dropped with probability ``dropout``, at least one kept."""
    keep = torch.rand(count) >= dropout if dropout > 0 and count > 1 else torch.ones(count, dtype=torch.bool)
    if not keep.any():
        keep[torch.randint(count, (1,))] = True
    return keep


def _activate_output_heads(net: MultimodalSynthesisNet, dataset: SliceDataset, inputs: Sequence[str],
                           targets: Sequence[str], lesion_channel: bool, seed: int,
                           probe: int = 16) -> dict[str, float]:
    """Shift the bias of each freshly initialised decoder head that starts silent; returns {target: shift}.

    Each decoder ends in a 1x1 convolution with ReLU (authors' code) initialised Glorot-uniform with a zero bias:
    for some seeds most pixels start below zero and the first Adam steps silence the rest, leaving a decoder that
    outputs 0 everywhere for good (docs/deep_models.md). On ``probe`` slices
    spread over the training set (fused and individual decodings, brain pixels), a head active on fewer than half of
    the pixels gets its bias shifted so that half are (a data-dependent initialisation, as in Kraehenbuehl et al.,
    ICLR 2016); a head active on half or more keeps the authors' init."""
    where = {name: i for i, name in enumerate(dataset.channels)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the crops' centres; the training's own draws are untouched
        items = [dataset[int(i)] for i in np.linspace(0, len(dataset) - 1, min(probe, len(dataset)))]
    x = torch.stack([item[0] if isinstance(item, tuple) else item for item in items]).float()
    available = (torch.stack([item[1] for item in items]) if isinstance(items[0], tuple)
                 else torch.ones(x.shape[0], x.shape[1], dtype=torch.bool))
    held = [name for name in inputs if available[:, where[name]].any()]
    images = {name: x[:, where[name]:where[name] + 1] for name in held}
    present = {name: available[:, where[name]] for name in held}
    lesion = x[:, where["lesion"]:where["lesion"] + 1] if lesion_channel else None
    brain = (x[:, [where[name] for name in held]] != 0).any(dim=1, keepdim=True)
    shifts = {}
    for target in (t for t in targets if available[:, where[t]].any()):  # a decoder with no data will not train
        head = net.decoders[target].head[0]
        seen = []
        hook = head.register_forward_hook(lambda module, args, out: seen.append(out.detach().float()))
        try:
            with torch.no_grad():
                net(images, lesion, outputs=[target], decode_individual=True, present=present)
        finally:
            hook.remove()
        pre = seen[0][brain.repeat(seen[0].shape[0] // brain.shape[0], 1, 1, 1)]
        if pre.numel() and float((pre > 0).float().mean()) < 0.5:
            shift = -float(pre.median())
            with torch.no_grad():
                head.bias += shift
            shifts[target] = round(shift, 6)
    return shifts


@register
class MultimodalModel(NetworkWeights, SynthesisModel):
    """Chartsias et al. 2018: per-input encoders, latent fusion, per-target decoders (module docstring)."""

    family = "multimodal"
    description = "Latent-fusion multi-input multi-output 2-D synthesis, any subset of inputs (Chartsias et al. 2018)"

    def __init__(self, inputs: Sequence[str], targets: Sequence[str], latent_channels: int = 16, fusion: str = "max",
                 lesion_channel: bool = False, input_dropout: float = 0.0, axes=(2,), predict_axes=None,
                 min_brain: float = 0.1, crop: int | None = None, c1_weight: float = 1.0, c2_weight: float = 1.0,
                 c3_weight: float = 1.0, inference_batch: int = 16, incomplete_studies: bool = False,
                 ssim_weight: float = 0.0):
        # Inputs and targets may overlap (a BraSyn-style model completes any missing contrast of T1/T1C/T2/FLAIR),
        # so the base class's no-overlap check is not applied.
        if not inputs or not targets:
            raise ValueError(f"{self.family}: needs at least one input and one target contrast")
        if fusion not in FUSIONS:
            raise ValueError(f"multimodal: fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
        if not 0.0 <= float(input_dropout) < 1.0:
            raise ValueError(f"multimodal: input_dropout must be in [0, 1), got {input_dropout}")
        if float(ssim_weight) < 0:
            raise ValueError(f"multimodal: ssim_weight must be >= 0, got {ssim_weight}")
        axes = _axes(axes)
        self.inputs, self.targets = list(inputs), list(targets)
        if len(set(self.inputs)) != len(self.inputs) or len(set(self.targets)) != len(self.targets):
            raise ValueError("multimodal: duplicate contrasts in the inputs or targets")
        self.hparams = dict(latent_channels=int(latent_channels), fusion=str(fusion), lesion_channel=bool(lesion_channel),
                            input_dropout=float(input_dropout), axes=list(axes),
                            predict_axes=list(_axes(predict_axes)) if predict_axes is not None else None,
                            min_brain=float(min_brain), crop=None if crop is None else int(crop),
                            c1_weight=float(c1_weight), c2_weight=float(c2_weight),
                            c3_weight=float(c3_weight), inference_batch=int(inference_batch),
                            incomplete_studies=bool(incomplete_studies), ssim_weight=float(ssim_weight))
        self.device = "auto"  # inference device of a loaded model; a trained one stays where it was trained
        self.net = self._build()

    def _build(self) -> MultimodalSynthesisNet:
        hp = self.hparams
        return MultimodalSynthesisNet(self.inputs, self.targets, hp["latent_channels"], hp["fusion"],
                                      hp["lesion_channel"])

    # -- inputs ---------------------------------------------------------------------------------------------------
    def usable_inputs(self, available: Sequence[str]) -> list[str]:
        """Every trained input found in ``available`` (any non-empty subset works)."""
        used = [c for c in self.inputs if c in available]
        if not used:
            raise ValueError(f"multimodal needs at least one of {join(self.inputs)}; got "
                             f"{join(available) or 'nothing'}")
        return used

    def training_contrasts(self, available: Sequence[str]) -> list[str]:
        """With ``incomplete_studies``, a study holding an input and another of the model's contrasts serves with
        what it holds; otherwise it must hold them all."""
        if not self.hparams["incomplete_studies"]:
            return super().training_contrasts(available)
        held = [c for c in unique([*self.inputs, *self.targets]) if c in available]
        serves = any(c in self.inputs for c in held) and any(c in self.targets for c in held) and len(held) >= 2
        return held if serves else []

    def starting_weights(self, state: dict, inputs: Sequence[str], targets: Sequence[str]) -> dict:
        """The encoders of this model's inputs and the decoders of its targets, out of a checkpoint trained for
        these contrasts or more: every contrast has its own encoder and decoder, so a model for one task can start
        from an any-subset one (which, with max fusion, predicts the same from those inputs before the fine-tune)."""
        missing = [f"encoder for {c}" for c in self.inputs if c not in inputs]
        missing += [f"decoder for {c}" for c in self.targets if c not in targets]
        if missing:
            raise ValueError(f"the checkpoint has no {' nor '.join(missing)}")
        kept = tuple([f"net.encoders.{c}." for c in self.inputs] + [f"net.decoders.{c}." for c in self.targets])
        return {k: v for k, v in state.items() if k.startswith(kept)}

    def _channels(self, targets: Sequence[str]) -> list[str]:
        return unique([*self.inputs, *targets]) + (["lesion"] if self.hparams["lesion_channel"] else [])

    # -- training -------------------------------------------------------------------------------------------------
    def _loss(self, targets: Sequence[str], channels: list[str], train: Sequence[PreparedSubject]):
        hp = self.hparams
        cost = MultimodalSynthesisLoss(
            hp["c1_weight"], hp["c2_weight"], hp["c3_weight"], hp["ssim_weight"],
            {t: typical_data_range(train, t) for t in targets if any(t in s.images for s in train)}
            if hp["ssim_weight"] > 0 else None)
        where = {name: i for i, name in enumerate(channels)}
        lesion_channel = hp["lesion_channel"]

        def loss(net, batch, device):
            x, available = batch if isinstance(batch, (list, tuple)) else (batch, None)
            x = x.to(device, non_blocking=True)
            if available is None:
                available = torch.ones(x.shape[0], len(channels), dtype=torch.bool)
            held = available[:, [where[name] for name in self.inputs]]
            present = held & _kept_inputs(len(self.inputs), hp["input_dropout"])
            # A sample left without input by the dropout keeps one of its own, drawn at random.
            empty = ~present.any(dim=1)
            if empty.any():
                pick = (torch.rand(held.shape) * held).argmax(dim=1)
                present[empty, pick[empty]] = True
            used = [i for i, name in enumerate(self.inputs) if present[:, i].any()]
            images = {self.inputs[i]: x[:, where[self.inputs[i]]:where[self.inputs[i]] + 1] for i in used}
            flags = {self.inputs[i]: present[:, i].to(device) for i in used}
            lesion = x[:, where["lesion"]:where["lesion"] + 1] if lesion_channel else None
            out = net(images, lesion, outputs=list(targets), decode_individual=True, present=flags)
            return cost(out, {t: x[:, where[t]:where[t] + 1] for t in targets},
                        available={t: available[:, where[t]].to(device) for t in targets})

        return loss

    def fit(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        if not train:
            raise ValueError("multimodal: no training subject")
        seed_everything(settings.seed)
        self.net = self._initial_network(settings)
        return self._train(self.targets, train, validation, settings, self.net.parameters(), "multimodal")

    def _train(self, targets, train, validation, settings, parameters, tag) -> dict:
        hp = self.hparams
        channels = self._channels(targets)
        dataset = SliceDataset(train, channels, hp["axes"], hp["min_brain"], crop=hp["crop"],
                               missing_ok=hp["incomplete_studies"])
        lr = learning_rate(settings, 1e-4)
        # A resumed run repeats the shift on the same seeded init (its weights then come from the partial file), so
        # its summary records it too.
        shifts = _activate_output_heads(self.net, dataset, self.inputs, targets, hp["lesion_channel"],
                                        settings.seed) if settings.initial_state is None else {}
        summary = train_network(
            self.net, dataset, self._loss(targets, channels, train), settings,
            identity={"family": tag, "inputs": list(self.inputs), "targets": list(targets),
                      "hparams": resumable_hparams(self.recorded_hparams(), self.finishing_hparams)},
            lr=lr, optimizer="adam", parameters=parameters,
            validate=(lambda: validation_scores(self.predict, validation, targets)) if validation else None,
            find_unused_parameters=hp["input_dropout"] > 0 or hp["incomplete_studies"] or tag != "multimodal",
            schedule=self.schedule)
        summary["validation_metric"] = "mean PSNR" if validation else "training loss (no validation subject)"
        summary["slice_size"] = list(dataset.size)
        if shifts:
            summary["output_bias_shift"] = shifts
        return summary

    def add_output(self, target: str, train: list[PreparedSubject], validation: list[PreparedSubject],
                   settings: TrainSettings) -> dict:
        """Add a decoder synthesizing ``target`` to this trained model and train it alone (paper Sec. VI-E): the
        encoders and the existing decoders are frozen, the new decoder is optimised on c1 + c2 + c3 of ``target``
        with Adam. ``target`` is appended to ``self.targets``; save with `Checkpoint.from_model` as usual."""
        if target in self.targets:
            raise ValueError(f"multimodal: already synthesizes {target}")
        seed_everything(settings.seed)
        decoder = self.net.add_output(target)
        self.targets.append(target)
        frozen = [p for name, p in self.net.named_parameters() if not name.startswith(f"decoders.{target}.")]
        for parameter in frozen:
            parameter.requires_grad_(False)
        try:
            summary = self._train([target], train, validation, settings, decoder.parameters(), "multimodal+decoder")
        except BaseException:
            del self.net.decoders[target]
            self.targets.remove(target)
            raise
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
        summary["added_output"] = target
        return summary

    # -- inference ------------------------------------------------------------------------------------------------
    def predict(self, subject: PreparedSubject, target: str, axes: Sequence[int] | None = None,
                inputs: Sequence[str] | None = None) -> np.ndarray:
        """``target`` from every trained input the subject holds except ``target`` itself (or only ``inputs``),
        slice-wise along each of ``axes`` (default: the predict_axes hparam, else the training axes) whose slice
        plane is well sampled in this subject (`sampled_planes`), averaged."""
        if target not in self.targets:
            raise ValueError(f"multimodal: not trained for {target} (trained: {', '.join(self.targets)})")
        available = [c for c in (inputs if inputs is not None else subject.images) if c in subject.images]
        names = [c for c in self.inputs if c in available and c != target]
        if not names:
            raise ValueError(f"multimodal: subject {subject.id} holds none of {join(self.inputs)} "
                             f"to synthesize {target} from (a target is never its own input)")
        axes = sampled_planes(subject.spacing, _axes(axes if axes is not None
                                                     else (self.hparams["predict_axes"] or self.hparams["axes"])))
        lesion_channel = self.hparams["lesion_channel"]
        arrays = [subject.images[c] for c in names]
        if lesion_channel:
            arrays.append(np.zeros(subject.shape, np.float32) if subject.lesion is None
                          else subject.lesion.astype(np.float32))
        net, device, dtype = self._for_inference()

        def run(batch):
            images = {name: batch[:, i:i + 1] for i, name in enumerate(names)}
            lesion = batch[:, -1:] if lesion_channel else None
            return net(images, lesion, outputs=[target], decode_individual=False)["outputs"][target]

        total = sum(predict_slices(run, arrays, axis, device, self.hparams["inference_batch"], dtype=dtype)[0]
                    for axis in axes)
        return np.where(subject.mask, total / len(axes), 0).astype(np.float32)
