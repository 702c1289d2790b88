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
    """"CPU: <model>, N cores, <vector ISA>[ + native bfloat16]" or "GPU: <name>" for the device that
    "auto"/"cpu"/"cuda[:i]" resolves to. The same CPU model name covers parts with and without AVX-512 BF16, which
    change the seconds several-fold (docs/deep_models.md), so the CPU's capabilities are part of its name."""
    import torch

    from medsynth_app.training.devices import native_bfloat16, resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(resolved)}"
    bfloat16 = " + native bfloat16" if native_bfloat16(resolved) else ""
    return (f"CPU: {cpu_name()}, {len(os.sched_getaffinity(0))} cores, "
            f"{torch.backends.cpu.get_cpu_capability()}{bfloat16}")
