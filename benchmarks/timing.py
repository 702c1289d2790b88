"""Seconds to synthesize one volume end to end (read, preprocess, predict, write; EVALUATION.md "Times"), median of
N runs, and the peak resident memory of the process doing it.

The measurement runs in a fresh Python process per model, so that its peak memory is that model's alone:
``python -m benchmarks.timing --weights W --input T1=FILE ... --target T2 --repeats 5 --json OUT``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def peak_resident_kib() -> int:
    """Peak resident memory of this process image. Linux's VmHWM, because ru_maxrss survives exec: a child started
    from a large parent would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(weights: str, inputs: dict[str, str], target: str, repeats: int, scratch: Path) -> dict:
    import torch

    from medsynth_app import pipeline
    from medsynth_app.checkpoint import load_checkpoint
    from medsynth_app.imageio import read_image, write_image

    checkpoint = load_checkpoint(weights)
    seconds = []
    for repeat in range(repeats):
        started = time.perf_counter()
        images = {c: read_image(p) for c, p in inputs.items()}
        image = pipeline.synthesize(checkpoint, images, target)
        write_image(image, scratch / f"synthetic_{repeat}.nii.gz",
                    pipeline.provenance_for(checkpoint, list(inputs), target))
        seconds.append(time.perf_counter() - started)
    peak_kib = peak_resident_kib()
    return {"seconds": [round(s, 2) for s in seconds], "median_seconds": round(statistics.median(seconds), 2),
            "peak_memory_mb": round(peak_kib / 1024, 1), "repeats": repeats, "torch_threads": torch.get_num_threads(),
            # above the core count, other processes competed for the CPU and the seconds are pessimistic
            "load_average_1min": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}


def measure_in_subprocess(weights: Path, inputs: dict[str, Path], target: str, repeats: int, device: str,
                          scratch: Path) -> dict:
    """`measure` in a new process; device "cpu" hides any GPU from it, otherwise inference picks CUDA when present."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}))
    # the harness sits beside the installed library, not in it: the child imports it from the repository root
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPOSITORY), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(dir=scratch) as work:
        out = Path(work) / "timing.json"
        command = [sys.executable, "-m", "benchmarks.timing", "--weights", str(weights),
                   "--target", target, "--repeats", str(repeats), "--scratch", work,
                   "--json", str(out), *[f"--input={c}={p}" for c, p in inputs.items()]]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"timing {weights} failed: {done.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--input", action="append", required=True, metavar="CONTRAST=FILE")
    parser.add_argument("--target", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    inputs = dict(item.split("=", 1) for item in args.input)
    result = measure(args.weights, inputs, args.target, args.repeats, Path(args.scratch))
    Path(args.json).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
