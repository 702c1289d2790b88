"""A 2-D convolution whose borders are padded by repeating edge pixels, with a faster pad for channels-last maps."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def memory_layout(x: Tensor) -> torch.memory_format:
    """channels_last for a (B, C, H, W) tensor stored so (and not also channels-first), else contiguous_format."""
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


class _ReplicatePad2d(torch.autograd.Function):
    """Replication padding that keeps the memory layout and moves each full-size map once, forward and backward.

    torch's replication-pad kernel converts a channels-last input to channels-first and its output back; writing the
    border into a padded copy with sliced assignments keeps the layout, but autograd then clones the full gradient
    once per assignment. Here the forward copies the map once into an uninitialised padded tensor and the backward
    copies the interior of the gradient once and adds the border's sums to the edge rows and columns."""

    @staticmethod
    def forward(ctx, x: Tensor, p: int) -> Tensor:
        ctx.p = p
        height, width = x.shape[-2:]
        y = torch.empty((*x.shape[:-2], height + 2 * p, width + 2 * p), dtype=x.dtype, device=x.device,
                        memory_format=memory_layout(x))
        y[..., p:-p, p:-p] = x
        y[..., :p, p:-p] = x[..., :1, :]
        y[..., -p:, p:-p] = x[..., -1:, :]
        y[..., :, :p] = y[..., :, p:p + 1]
        y[..., :, -p:] = y[..., :, -p - 1:-p]
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        p = ctx.p
        grad_x = grad[..., p:-p, p:-p].clone(memory_format=memory_layout(grad))
        grad_x[..., 0, :] += grad[..., :p, p:-p].sum(-2)
        grad_x[..., -1, :] += grad[..., -p:, p:-p].sum(-2)
        grad_x[..., :, 0] += grad[..., p:-p, :p].sum(-1)
        grad_x[..., :, -1] += grad[..., p:-p, -p:].sum(-1)
        grad_x[..., 0, 0] += grad[..., :p, :p].sum((-2, -1))
        grad_x[..., 0, -1] += grad[..., :p, -p:].sum((-2, -1))
        grad_x[..., -1, 0] += grad[..., -p:, :p].sum((-2, -1))
        grad_x[..., -1, -1] += grad[..., -p:, -p:].sum((-2, -1))
        return grad_x, None


def replicate_pad2d(x: Tensor, p: int) -> Tensor:
    """``F.pad(x, (p, p, p, p), mode="replicate")`` of a (B, C, H, W) tensor, in the same memory layout (p >= 1)."""
    return _ReplicatePad2d.apply(x, p)


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
