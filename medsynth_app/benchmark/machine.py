"""The name of the device a benchmark ran on, as the report states it."""
from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: str = "auto") -> str:
    """"CPU: <model>, N cores" or "GPU: <name>" for the device that "auto"/"cpu"/"cuda[:i]" resolves to."""
    from ..training.engine import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        import torch

        return f"GPU: {torch.cuda.get_device_name(resolved)}"
    return f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores"
