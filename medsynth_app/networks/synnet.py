"""SynNet: a fully convolutional encoder-decoder with index unpooling and long skip connections for cross-modal MR
synthesis, in single-input single-output (SISO), multi-input single-output (MISO) and multi-input multi-output (MIMO)
configurations (Sec. 2.1 and Fig. 1 of the SynNet paper, shared/papers/synnet_siso_miso_mimo_joint_loss.txt). Its
training cost is `medsynth_app.losses.SynNetJointLoss`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class _EncoderBlock(nn.Module):
    """conv 3x3 (with bias) - batch norm - ReLU - 2x2 max-pool keeping the pooling indices."""

    def __init__(self, in_channels: int, features: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, features, 3, padding=1), nn.BatchNorm2d(features), nn.ReLU()
        )
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (pooled, skip features before pooling, pooling indices)."""
        skip = self.conv(x)
        pooled, indices = self.pool(skip)
        return pooled, skip, indices


class _DecoderBlock(nn.Module):
    """Index unpooling with the matched encoder block's indices - concatenation with its skip features - conv 3x3 -
    batch norm - ReLU. With several encoder arms, the features are unpooled once with each arm's indices and every
    arm's skip features are concatenated."""

    def __init__(self, n_arms: int, features: int) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2)
        self.conv = nn.Sequential(
            nn.Conv2d(2 * n_arms * features, features, 3, padding=1), nn.BatchNorm2d(features), nn.ReLU()
        )

    def forward(self, x: Tensor, skips: list[Tensor], indices: list[Tensor]) -> Tensor:
        # output_size restores odd sizes that flooring max-pooling lost (e.g. the paper's 181x181 BRATS slices)
        # Autocast would run the unpooling in float32 and so the concatenation and a cast back; it only moves values.
        with torch.autocast(x.device.type, enabled=False):
            unpooled = [self.unpool(x, idx, output_size=skip.shape[-2:]) for skip, idx in zip(skips, indices)]
        return self.conv(torch.cat(unpooled + skips, dim=1))


class SynNet(nn.Module):
    """SynNet for SISO (n_inputs = n_outputs = 1), MISO (n_inputs > 1) and MIMO (n_outputs > 1) synthesis.

    Input (B, n_inputs, H, W), channel i going to encoder arm i; output (B, n_outputs, H, W), channel k from decoder
    arm k. Any H, W >= 2**depth work: unpooling restores the exact pre-pooling size.

    From the paper (Sec. 2.1): 3x3 convolutions with bias, batch norm and ReLU in every encoder and decoder block;
    2x2 max pooling whose indices drive the matched decoder block's unpooling (Fig. 2); long skips concatenated after
    unpooling; a 1x1 linear synthesis convolution from a 64-channel map; MISO = one encoder arm per input, processed in
    parallel and concatenated into one decoder arm; MIMO = one decoder arm per output, each fed by the skips of all
    encoder arms.

    Chosen here (the text gives no figure for them and Fig. 1 is not available): ``features`` = 64 in every block
    (the paper only states the final 64-channel map; constant width as in ReLayNet, whose index-unpooling and
    concatenation design SynNet follows); ``depth`` = 4 encoder/decoder blocks (240x240 BRATS slices reach 15x15);
    a conv-BN-ReLU bottleneck between the deepest encoder and decoder blocks, which is also where MISO/MIMO arms
    meet (the concatenated deepest features of all encoder arms are reduced to ``features`` channels and shared by
    all decoder arms); zero "same" padding.
    """

    def __init__(self, n_inputs: int, n_outputs: int, features: int = 64, depth: int = 4) -> None:
        super().__init__()
        if n_inputs < 1 or n_outputs < 1 or features < 1 or depth < 1:
            raise ValueError(
                "SynNet needs positive n_inputs, n_outputs, features and depth; "
                f"got {n_inputs}, {n_outputs}, {features}, {depth}"
            )
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs
        self.depth = depth
        self.encoders = nn.ModuleList(
            nn.ModuleList(_EncoderBlock(1 if level == 0 else features, features) for level in range(depth))
            for _ in range(n_inputs)
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(n_inputs * features, features, 3, padding=1), nn.BatchNorm2d(features), nn.ReLU()
        )
        self.decoders = nn.ModuleList(
            nn.ModuleList(_DecoderBlock(n_inputs, features) for _ in range(depth)) for _ in range(n_outputs)
        )
        self.synthesis = nn.ModuleList(nn.Conv2d(features, 1, 1) for _ in range(n_outputs))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.n_inputs:
            raise ValueError(f"SynNet expects (B, {self.n_inputs}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 2**self.depth:
            raise ValueError(f"SynNet of depth {self.depth} needs H, W >= {2**self.depth}, got {tuple(x.shape[-2:])}")
        skips: list[list[Tensor]] = [[] for _ in range(self.depth)]
        indices: list[list[Tensor]] = [[] for _ in range(self.depth)]
        deepest = []
        for i, arm in enumerate(self.encoders):
            h = x[:, i : i + 1]
            for level, block in enumerate(arm):
                h, skip, idx = block(h)
                skips[level].append(skip)
                indices[level].append(idx)
            deepest.append(h)
        bottom = self.bottleneck(torch.cat(deepest, dim=1))
        syntheses = []
        for arm, head in zip(self.decoders, self.synthesis):
            h = bottom
            for level in reversed(range(self.depth)):
                h = arm[level](h, skips[level], indices[level])
            syntheses.append(head(h))
        return torch.cat(syntheses, dim=1)
