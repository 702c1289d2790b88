"""Devices and arithmetic: which device to run on, whether it computes bfloat16 natively, the autocast dtype of the
``amp`` setting for training and for inference, and the memory layout convolutional networks run in."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .common import module_device
from .schedule import amp_mode

logger = logging.getLogger(__name__)


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto" (or None/""): CUDA when available, else CPU; otherwise the named device, checked."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device



def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU with bf16 support, a CPU with AVX-512 BF16 or
    AMX. Elsewhere torch emulates it, several times slower than float32 (docs/deep_models.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_dtype(device: torch.device, amp) -> torch.dtype | None:
    """The autocast dtype of the ``amp`` setting (module docstring) on ``device``; None for float32. "bf16" falls
    back to float32, with a warning, on a device without `native_bfloat16`."""
    mode = amp_mode(amp)
    if mode == "bf16":
        if native_bfloat16(device):
            return torch.bfloat16
        logger.warning("amp bf16: %s has no native bfloat16, training in float32 instead", device)
        return None
    return torch.float16 if mode == "auto" and device.type == "cuda" else None


def inference_dtype(device: torch.device, amp) -> torch.dtype | None:
    """The autocast dtype a network trained with the ``amp`` setting predicts under on ``device`` (`inference`
    module docstring); None for float32."""
    return torch.bfloat16 if amp_mode(amp) == "bf16" and native_bfloat16(device) else None


def channels_last_format(network: nn.Module) -> torch.memory_format:
    """channels_last for 2-D convolutional networks, channels_last_3d for 3-D ones, else the default layout."""
    ranks = {p.dim() for p in network.parameters()}
    return (torch.channels_last_3d if 5 in ranks else torch.channels_last if 4 in ranks
            else torch.preserve_format)



def place_for_inference(net: torch.nn.Module, wanted: str | None) -> torch.device:
    """Move a network that sits on the CPU to the ``wanted`` device ("auto", "cuda", ...) once, in the layout it
    trained in (channels-last: a loaded network then predicts exactly what the trained one did); returns its device."""
    device = module_device(net)
    if device.type == "cpu" and wanted is not None:
        target = resolve_device(wanted)
        net.to(target, memory_format=channels_last_format(net))
        device = target
    return device

