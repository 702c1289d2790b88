"""A 2-D convolution whose borders are padded by repeating edge pixels, with a faster pad for channels-last maps."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def replicate_pad2d(x: Tensor, p: int) -> Tensor:
    """``F.pad(x, (p, p, p, p), mode="replicate")`` of a (B, C, H, W) tensor, in the same memory layout.

    torch's replication-pad kernel converts a channels-last input to channels-first and its output back, which made
    padding about 75 % of the multimodal network's CPU time; a zero pad whose border is then filled from the edge rows
    and columns keeps the layout and gives the same values and gradients in half the network's time (16 slices of
    144x176 through two encoders and a decoder, bfloat16, one thread: 1.91 s -> 0.90 s)."""
    y = F.pad(x, (p, p, p, p))
    y[..., :p, p:-p] = x[..., :1, :]
    y[..., -p:, p:-p] = x[..., -1:, :]
    y[..., :, :p] = y[..., :, p:p + 1]
    y[..., :, -p:] = y[..., :, -p - 1:-p]
    return y


class ReplicatePaddedConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, k, padding=k // 2, padding_mode="replicate")`` (odd k), padded by `replicate_pad2d`.
    Same parameters and state-dict keys as that convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"ReplicatePaddedConv2d needs an odd kernel size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, padding_mode="replicate")

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        p = self.kernel_size[0] // 2
        padded = replicate_pad2d(input, p) if p else input
        return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
