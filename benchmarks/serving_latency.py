"""Latency of a synthesis through the MONAI Label server beside the library's own, on one study.

    python benchmarks/serving_latency.py --study ../shared/data/hinet_brats2018_slices/s09_test \
        --models linear,synnet --repeats 5

For each model family (its checkpoint for T1+T2 -> FLAIR):
- library: ``pipeline.synthesize`` from the files to a written NIfTI in this process, the model built once
  (cold: the first call, checkpoint load and model build included; warm: the median of the next ``--repeats``);
- server: ``POST /infer/<family>?image=<study>_T1&output=image`` to a local server started on the study (cold: the
  first request after start; warm: the median of the next ``--repeats``), the response body written to disk.
Library and server calls alternate, so that both see the same load of the machine.
Prints one JSON object per family and a markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

INPUTS, TARGET = ("T1", "T2"), "FLAIR"


class Library:
    """``pipeline.synthesize`` from the files to a written NIfTI in this process, the model built on the first call."""

    def __init__(self, family: str, files: dict[str, Path], out: Path):
        self.family, self.files, self.out, self.model, self.calls = family, files, out, None, 0

    def __call__(self) -> float:
        from medsynth_app.imageio import read_image, write_image
        from medsynth_app.pipeline import provenance_for, synthesize
        from medsynth_app.weights import find

        started = time.perf_counter()
        if self.model is None:
            _, self.checkpoint = find(self.family, TARGET, list(INPUTS))
            self.model = self.checkpoint.build()
        images = {c: read_image(self.files[c]) for c in INPUTS}
        image = synthesize(self.checkpoint, images, TARGET, model=self.model)
        self.calls += 1
        write_image(image, self.out / f"library_{self.family}_{self.calls}.nii.gz",
                    provenance_for(self.checkpoint, list(INPUTS), TARGET))
        return time.perf_counter() - started


def server_seconds(url: str, family: str, image_id: str, out: Path) -> float:
    import requests

    started = time.perf_counter()
    response = requests.post(f"{url}/infer/{family}", params={"image": image_id, "output": "image"},
                             files={"params": (None, json.dumps({"target": TARGET}))}, timeout=900)
    if response.status_code != 200:
        raise RuntimeError(f"{family}: HTTP {response.status_code}: {response.text}")
    (out / f"server_{family}.nii.gz").write_bytes(response.content)
    return time.perf_counter() - started


def main() -> None:
    from medsynth_server.launcher import running_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="folder with t1/t2 (and flair) NIfTI files of one subject")
    parser.add_argument("--models", default="linear,synnet")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    study = Path(args.study).resolve()
    files = {c: next(p for p in sorted(study.iterdir()) if p.name.lower().startswith(c.lower() + ".")) for c in INPUTS}
    families = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="medsynth-latency-") as scratch:
        scratch = Path(scratch)
        datastore = scratch / "datastore"
        datastore.mkdir()
        for contrast, path in files.items():  # copies: the datastore resolves links to their target's name
            shutil.copy(path, datastore / f"bench_{contrast}.nii.gz")
        # the server computes with as many threads as this process (the launcher's default is 2)
        threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        with running_server(datastore, scratch / "server", conf_models=",".join(families),
                            conf={"user_models": str(scratch / "user_models")}, env=threads) as url:
            for family in families:  # library and server calls alternate: both see the same machine load
                library = Library(family, files, scratch)
                times = {"library": [], "server": []}
                for _ in range(args.repeats + 1):
                    times["library"].append(library())
                    times["server"].append(server_seconds(url, family, "bench_T1", scratch))
                for where, seconds in times.items():
                    rows.append({"family": family, "where": where, "cold_s": round(seconds[0], 2),
                                 "warm_median_s": round(statistics.median(seconds[1:]), 2),
                                 "warm_s": [round(t, 2) for t in seconds[1:]]})
                    print(json.dumps(rows[-1]), flush=True)
    print("\n| model | library cold (s) | library warm (s) | server cold (s) | server warm (s) | warm server / library |")
    print("|---|---|---|---|---|---|")
    for family in families:
        lib, srv = (next(r for r in rows if r["family"] == family and r["where"] == w) for w in ("library", "server"))
        print(f"| {family} | {lib['cold_s']:.2f} | {lib['warm_median_s']:.2f} | {srv['cold_s']:.2f} | "
              f"{srv['warm_median_s']:.2f} | {srv['warm_median_s'] / lib['warm_median_s']:.2f} |")


if __name__ == "__main__":
    main()
