"""Whole-volume inference: slice-wise for the 2-D networks, exact tiling of the valid outputs for the 3-D one.

Precision: a network trained under bfloat16 autocast (``amp`` "bf16") also predicts under it where the device computes
bfloat16 natively (a CPU with AVX-512 BF16 or AMX, a CUDA GPU with bf16 support); otherwise, and for every other
``amp``, inference runs in float32. The weights and the returned volume stay float32. What bfloat16 changes in the
scores and the seconds of the shipped checkpoints: docs/deep_models.md.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .allocator import keep_freed_memory
from .datasets import _pad_centred, round_up

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


def inference_network(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` for prediction, with the same outputs to float rounding; ``net`` is untouched.

    In every ``nn.Sequential``, a convolution followed by a batch norm becomes one convolution (the norm's running
    statistics and affine folded into its weights), and a ReLU or LeakyReLU right after a convolution runs in place
    (the convolution's output has no other reader). Large freed tensors stay in the process
    heap for the next batch (`keep_freed_memory`)."""
    keep_freed_memory()
    network = copy.deepcopy(net).eval()
    for module in network.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.modules.conv._ConvNd) and isinstance(norm, nn.modules.batchnorm._BatchNorm):
                module[i], module[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
        producer = None
        for layer in module:
            if isinstance(layer, ACTIVATIONS) and isinstance(producer, nn.modules.conv._ConvNd):
                layer.inplace = True
            if not isinstance(layer, nn.Identity):
                producer = layer
    return network


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def predict_slices(run: Callable[[torch.Tensor], torch.Tensor], arrays: Sequence[np.ndarray], axis: int,
                   device: torch.device, batch_size: int = 16, divisor: int = 16,
                   dtype: torch.dtype | None = None) -> np.ndarray:
    """Apply ``run`` ((B, C, H, W) tensor on ``device`` -> (B, T, H, W)) to every slice along ``axis`` of the C
    co-registered volumes ``arrays``, under ``dtype`` autocast when given; returns (T, I, J, K) float32. Slices are
    padded (centred, zeros) to multiples of ``divisor`` and cropped back. Batches go in channels-last, the faster
    layout for convolutions on CPUs and GPUs."""
    volume = np.stack(arrays).astype(np.float32, copy=False)  # (C, I, J, K)
    n = volume.shape[1 + axis]
    h, w = (s for a, s in enumerate(volume.shape[1:]) if a != axis)
    size = (round_up(h, divisor), round_up(w, divisor))
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    out = None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        chunk = np.moveaxis(np.take(volume, range(start, stop), axis=1 + axis), 1 + axis, 0)  # (B, C, h, w)
        batch = np.stack([_pad_centred(s, size) for s in chunk])
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
        with _autocast(device, dtype):
            y = run(x)
        y = y.float()[:, :, top:top + h, left:left + w].cpu().numpy()
        if out is None:
            out = np.zeros((y.shape[1], *volume.shape[1:]), np.float32)
        index = [slice(None)] * 4
        index[1 + axis] = slice(start, stop)
        out[tuple(index)] = np.moveaxis(y, 0, 1 + axis)
    return out


@torch.no_grad()
def predict_tiled(net: torch.nn.Module, volume: np.ndarray, tile: int, margin: int, device: torch.device,
                  batch_size: int = 4, mask: np.ndarray | None = None, dtype: torch.dtype | None = None) -> np.ndarray:
    """Valid-convolution inference over a whole (C, I, J, K) volume; returns (T, I, J, K) float32.

    The volume is zero-padded by ``margin`` (the network's receptive-field margin: input side = output side + 2
    margin) and cut into input tiles of side tile + 2 margin starting at multiples of ``tile`` (even), whose tile^3
    outputs abut exactly; the last tiles along an axis reach past the volume and are cropped. Because every tile
    starts at an even offset, the 2x2x2 pooling sees the same grid as a single pass over the whole padded volume:
    the result equals that single pass (to float rounding), with no seams. Tiles whose output holds no voxel of
    ``mask`` are skipped (left at 0). ``dtype``: autocast dtype, None for float32."""
    if tile % 2:
        raise ValueError(f"the output tile side must be even (the network pools by 2), got {tile}")
    channels, *shape = volume.shape
    counts = [-(-side // tile) for side in shape]
    padded = np.pad(volume.astype(np.float32, copy=False),
                    [(0, 0)] + [(margin, n * tile - side + margin) for n, side in zip(counts, shape)])
    starts = [s for s in itertools.product(*(range(0, n * tile, tile) for n in counts))
              if mask is None or mask[s[0]:s[0] + tile, s[1]:s[1] + tile, s[2]:s[2] + tile].any()]
    out = None
    side = tile + 2 * margin
    for first in range(0, len(starts), batch_size):
        group = starts[first:first + batch_size]
        batch = np.stack([padded[:, i:i + side, j:j + side, k:k + side] for i, j, k in group])
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last_3d)
        with _autocast(device, dtype):
            y = net(x)
        y = y.float().cpu().numpy()
        if y.shape[-3:] != (tile,) * 3:
            raise ValueError(f"tile input {side}^3 gave a {y.shape[-3:]} output, expected {tile}^3: wrong margin")
        if out is None:
            out = np.zeros((y.shape[1], *(n * tile for n in counts)), np.float32)
        for (i, j, k), block in zip(group, y):
            out[:, i:i + tile, j:j + tile, k:k + tile] = block
    if out is None:  # nothing to predict
        with torch.no_grad():
            probe = net(torch.zeros(1, channels, side, side, side, device=device))
        return np.zeros((probe.shape[1], *shape), np.float32)
    return np.ascontiguousarray(out[:, :shape[0], :shape[1], :shape[2]])
