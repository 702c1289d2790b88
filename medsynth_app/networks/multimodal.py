"""Multi-input multi-output synthesis through a modality-invariant latent space (Chartsias, Joyce, Giuffrida &
Tsaftaris, IEEE TMI 2018, "Multimodal MR synthesis via modality-invariant latent representation").

One encoder per input contrast (Sec. IV-A, Fig. 2), a fusion operator over whichever latents are present (Sec. IV-B,
IV-E) and one decoder per output contrast (Sec. IV-C, Fig. 3). Layer specifications follow the authors' Keras code
(agis85/multimodal_brain_synthesis, model.py; see shared/papers/NOTES.md). 2-D, slice-wise, channels first; images are
expected divided by their volume's mean intensity (Sec. V). The cost of eq. (7) is
`medsynth_app.losses.MultimodalSynthesisLoss`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

import torch
from torch import Tensor, nn

from .replicate_conv import ReplicatePaddedConv2d, memory_layout

FUSIONS = ("max", "mean", "hemis", "output_mean")


def _conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> ReplicatePaddedConv2d:
    # Sec. IV-A: stride 1 and borders padded by repeating edge pixels, so every map keeps the image size. The paper
    # says "throughout the network", so the decoder's 3x3 convolutions are padded the same way.
    return ReplicatePaddedConv2d(in_channels, out_channels, kernel_size)


def _keras_init(module: nn.Module) -> None:
    # The authors trained with Keras defaults: Glorot-uniform kernels and zero biases.
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def _check_spatial(x: Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % 4 or width % 4:
        raise ValueError(
            f"{name}: height and width must be divisible by 4 (two 2x2 poolings, then two upsamplings), "
            f"got {height}x{width}"
        )


class MultimodalEncoder(nn.Module):
    """Encoder f of Fig. 2: a two-level U-Net with 3x3 convolutions and LeakyReLU(0.3) mapping a (B, in_channels, H, W)
    slice to an image-sized latent (B, latent_channels, H, W) (Sec. IV-A). The up-sampling convolutions are linear
    before their skip concatenation, as in the authors' code. ``in_channels`` = 2 adds a lesion-mask channel
    (Sec. VI-H).
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 16) -> None:
        super().__init__()
        self.level1 = nn.Sequential(
            _conv(in_channels, 32), nn.LeakyReLU(0.3), _conv(32, 32), nn.LeakyReLU(0.3)
        )
        self.level2 = nn.Sequential(
            nn.MaxPool2d(2), _conv(32, 64), nn.LeakyReLU(0.3), _conv(64, 64), nn.LeakyReLU(0.3)
        )
        self.level3 = nn.Sequential(
            nn.MaxPool2d(2), _conv(64, 128), nn.LeakyReLU(0.3), _conv(128, 128), nn.LeakyReLU(0.3),
            nn.Upsample(scale_factor=2, mode="nearest"), _conv(128, 64),
        )
        self.up2 = nn.Sequential(
            _conv(128, 64), nn.LeakyReLU(0.3), _conv(64, 64), nn.LeakyReLU(0.3),
            nn.Upsample(scale_factor=2, mode="nearest"), _conv(64, 32),
        )
        self.up1 = nn.Sequential(
            _conv(64, 32), nn.LeakyReLU(0.3), _conv(32, 32), nn.LeakyReLU(0.3),
            _conv(32, latent_channels), nn.LeakyReLU(0.3),
        )
        _keras_init(self)

    def forward(self, x: Tensor) -> Tensor:
        _check_spatial(x, "MultimodalEncoder")
        skip1 = self.level1(x)
        skip2 = self.level2(skip1)
        x = self.up2(torch.cat([skip2, self.level3(skip2)], dim=1))
        return self.up1(torch.cat([skip1, x], dim=1))


class MultimodalDecoder(nn.Module):
    """Decoder g of Fig. 3, deliberately shallow (Sec. IV-C): two 3x3 conv32+ReLU, concatenated with the latent; two
    more, concatenated with that; a 1x1 convolution to one channel with ReLU (synthetic intensities are non-negative).
    """

    def __init__(self, latent_channels: int = 16) -> None:
        super().__init__()
        self.block1 = nn.Sequential(_conv(latent_channels, 32), nn.ReLU(), _conv(32, 32), nn.ReLU())
        self.block2 = nn.Sequential(_conv(latent_channels + 32, 32), nn.ReLU(), _conv(32, 32), nn.ReLU())
        self.head = nn.Sequential(_conv(latent_channels + 64, 1, kernel_size=1), nn.ReLU())
        _keras_init(self)

    def forward(self, z: Tensor) -> Tensor:
        z = torch.cat([z, self.block1(z)], dim=1)
        z = torch.cat([z, self.block2(z)], dim=1)
        return self.head(z)


class MultimodalOutput(TypedDict):
    """What `MultimodalSynthesisNet.forward` returns.

    outputs: the synthesis per output contrast, (B, 1, H, W), decoded from the fused latent (or, for "output_mean",
        the mean of the individual decodings).
    latents: the encoder latent per given input contrast, (B, C, H, W) with C = latent_channels, or latent_channels // 2
        for "hemis" (cost c2 of eq. 3 is their variance).
    individual: individual[input][output] = decoding of that input's latent alone (cost c1 of eq. 2); for "hemis" the
        latent is completed with zeros in place of the variance, as in the authors' code. Empty when not requested.
    fused_latent: the fused latent Z_alpha (B, latent_channels, H, W); None for "output_mean".
    present: per given input, a (B,) bool tensor of the samples that hold it (all True unless ``present`` was given
        to `MultimodalSynthesisNet.forward`); the cost scores an input's latent only where it is present.
    """

    outputs: dict[str, Tensor]
    latents: dict[str, Tensor]
    individual: dict[str, dict[str, Tensor]]
    fused_latent: Tensor | None
    present: dict[str, Tensor]


def _check_names(names: Sequence[str], kind: str) -> list[str]:
    names = list(names)
    if not names:
        raise ValueError(f"at least one {kind} contrast is needed")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate {kind} contrasts in {names}")
    for name in names:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"invalid {kind} contrast name {name!r} (non-empty string without '.')")
    return names


class MultimodalSynthesisNet(nn.Module):
    """Encoders, fusion and decoders of Fig. 1/4, accepting any non-empty subset of its inputs at every call (Sec. III).

    Args:
        inputs: input contrast names; one encoder each.
        outputs: output contrast names; one decoder each (more can be added with `add_output`, Sec. VI-E).
        latent_channels: channels of the fused latent (16 in the paper, Sec. VI-A).
        fusion: "max" (eq. 1, default), "mean", "hemis" (concat of mean and variance; encoders then emit
            latent_channels // 2 channels, Sec. IV-E) or "output_mean" (average of the individually decoded images).
        lesion_channel: every encoder also receives a lesion mask as a second input channel (Sec. VI-H).
    """

    def __init__(
        self,
        inputs: Sequence[str],
        outputs: Sequence[str],
        latent_channels: int = 16,
        fusion: str = "max",
        lesion_channel: bool = False,
    ) -> None:
        super().__init__()
        inputs, outputs = _check_names(inputs, "input"), _check_names(outputs, "output")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")
        if latent_channels < 1 or (fusion == "hemis" and latent_channels % 2):
            raise ValueError(f"latent_channels must be positive (and even for hemis fusion), got {latent_channels}")
        self.latent_channels = latent_channels
        self.fusion = fusion
        self.lesion_channel = lesion_channel
        encoder_channels = latent_channels // 2 if fusion == "hemis" else latent_channels
        self.encoders = nn.ModuleDict(
            {name: MultimodalEncoder(2 if lesion_channel else 1, encoder_channels) for name in inputs}
        )
        self.decoders = nn.ModuleDict({name: MultimodalDecoder(latent_channels) for name in outputs})

    @property
    def inputs(self) -> list[str]:
        return list(self.encoders)

    @property
    def outputs(self) -> list[str]:
        return list(self.decoders)

    def add_output(self, name: str) -> MultimodalDecoder:
        """Add a freshly initialised decoder for a new output contrast and return it (Sec. VI-E: train it alone,
        after `freeze_encoders`, by optimising only its parameters)."""
        (name,) = _check_names([name], "output")
        if name in self.decoders:
            raise ValueError(f"output {name!r} already has a decoder")
        reference = next(self.parameters())
        decoder = MultimodalDecoder(self.latent_channels).to(device=reference.device, dtype=reference.dtype)
        self.decoders[name] = decoder
        return decoder

    def freeze_encoders(self, freeze: bool = True) -> None:
        """Stop (or, with freeze=False, restart) gradient flow into every encoder's parameters."""
        for parameter in self.encoders.parameters():
            parameter.requires_grad_(not freeze)

    def _fuse(self, stacked: Tensor, weights: Tensor) -> Tensor:
        """Fusion over the inputs (dim 0) present in each sample; ``weights`` (N, B, 1, 1, 1) is 1 where present."""
        if self.fusion == "max":
            return stacked.masked_fill(weights == 0, float("-inf")).amax(dim=0)
        mean = masked_mean_over_inputs(stacked, weights)
        if self.fusion == "mean":
            return mean
        # hemis; population variance, so a single input gives zeros as in the authors' code
        return torch.cat([mean, masked_mean_over_inputs((stacked - mean).square(), weights)], dim=1)

    def forward(
        self,
        images: Mapping[str, Tensor],
        lesion: Tensor | None = None,
        *,
        outputs: Sequence[str] | None = None,
        decode_individual: bool = True,
        present: Mapping[str, Tensor] | None = None,
    ) -> MultimodalOutput:
        """Synthesize from any non-empty subset of the trained inputs.

        Args:
            images: input contrast name -> (B, 1, H, W) slice, H and W divisible by 4, all the same shape; a missing
                contrast is left out (or given as None).
            lesion: (B, 1, H, W) lesion mask, required exactly when the model was built with lesion_channel.
            outputs: the output contrasts to decode (default: all).
            decode_individual: also decode every individual latent (needed by the training cost; inference can
                skip it, except for "output_mean" fusion which always needs them).
            present: per given input, a (B,) bool tensor: the samples that hold it (default: all). Fusion then runs
                over each sample's own inputs, so one batch can mix samples with different contrasts (training on
                incomplete studies); every sample needs at least one. The absent samples' pixels are ignored.
        """
        unknown = [name for name in images if name not in self.encoders]
        if unknown:
            raise ValueError(f"unknown input contrast {', '.join(map(repr, unknown))}; this model takes {self.inputs}")
        names = [name for name in self.encoders if images.get(name) is not None]
        if not names:
            raise ValueError(f"no input image given; this model takes any of {self.inputs}")
        wanted = self.outputs if outputs is None else list(outputs)
        if not wanted:
            raise ValueError(f"no output requested; this model has {self.outputs}")
        missing = [name for name in wanted if name not in self.decoders]
        if missing:
            raise ValueError(f"unknown output contrast {', '.join(map(repr, missing))}; this model has {self.outputs}")
        shape = images[names[0]].shape
        for name in names:
            _check_spatial(images[name], f"input {name!r}")
            if images[name].shape[1] != 1 or images[name].shape != shape:
                raise ValueError(
                    f"input {name!r}: expected shape (B, 1, H, W) equal for all inputs, got {tuple(images[name].shape)}"
                    f" and {tuple(shape)}"
                )
        if self.lesion_channel != (lesion is not None):
            raise ValueError(
                "this model needs a lesion mask" if self.lesion_channel
                else "this model was built without lesion_channel: no lesion mask expected"
            )
        if lesion is not None and lesion.shape != shape:
            raise ValueError(f"lesion: expected shape {tuple(shape)}, got {tuple(lesion.shape)}")

        flags = _presence(present, names, shape[0], images[names[0]].device)

        latents = {
            name: self.encoders[name](
                images[name] if lesion is None else torch.cat([images[name], lesion.to(images[name].dtype)], dim=1)
            )
            for name in names
        }
        individual_latents = list(latents.values())
        fused = None
        weights = torch.stack([flags[name] for name in names]).to(individual_latents[0].dtype)[:, :, None, None, None]
        if self.fusion != "output_mean":
            # the reduction over stacked latents returns channels-first maps; the decoders run in the latents' layout
            fused = self._fuse(torch.stack(individual_latents), weights).contiguous(
                memory_format=memory_layout(individual_latents[0]))
        if self.fusion == "hemis":
            individual_latents = [torch.cat([z, torch.zeros_like(z)], dim=1) for z in individual_latents]
        with_individual = decode_individual or self.fusion == "output_mean"

        # one decoder call per output on the batch of all latents to decode
        to_decode = (individual_latents if with_individual else []) + ([] if fused is None else [fused])
        batch = shape[0]
        predictions: dict[str, Tensor] = {}
        individual: dict[str, dict[str, Tensor]] = {name: {} for name in names} if with_individual else {}
        for out in wanted:
            decoded = self.decoders[out](torch.cat(to_decode, dim=0)).split(batch)
            if with_individual:
                for name, image in zip(names, decoded):
                    individual[name][out] = image
            predictions[out] = (decoded[-1] if fused is not None
                                else masked_mean_over_inputs(torch.stack(decoded), weights.to(decoded[0].dtype)))
        return MultimodalOutput(outputs=predictions, latents=latents, individual=individual, fused_latent=fused,
                                present=flags)


def masked_mean_over_inputs(stacked: Tensor, weights: Tensor) -> Tensor:
    """Mean over dim 0 (the inputs) of (N, B, ...) values, counting only where ``weights`` (N, B, 1, ...) is 1."""
    return (stacked * weights).sum(dim=0) / weights.sum(dim=0).clamp_min(1)


def _presence(present: Mapping[str, Tensor] | None, names: Sequence[str], batch: int,
              device: torch.device) -> dict[str, Tensor]:
    if present is None:
        return {name: torch.ones(batch, dtype=torch.bool, device=device) for name in names}
    flags = {}
    for name in names:
        flag = present.get(name)
        flag = (torch.ones(batch, dtype=torch.bool, device=device) if flag is None
                else flag.to(device=device, dtype=torch.bool).reshape(-1))
        if flag.shape[0] != batch:
            raise ValueError(f"present[{name!r}]: expected {batch} flags, got {flag.shape[0]}")
        flags[name] = flag
    if not torch.stack(list(flags.values())).any(dim=0).all():
        raise ValueError("every sample needs at least one present input")
    return flags
