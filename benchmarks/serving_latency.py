"""Latency of a synthesis through the MONAI Label server beside the library's own, on one study.

    python benchmarks/serving_latency.py --study ../shared/data/hinet_brats2018_slices/s09_test \
        --models linear,synnet --repeats 5

For each model family (its checkpoint for T1+T2 -> FLAIR):
- library: ``pipeline.synthesize`` from the files to a written NIfTI in this process, the model built once
  (cold: the first call, checkpoint load and model build included; warm: the median of the next ``--repeats``);
- server: ``POST /infer/<family>?image=<study>_T1&output=image`` to a local server started on the study (cold: the
  first request after start; warm: the median of the next ``--repeats``), the response body written to disk.
Prints one JSON object per family and a markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

INPUTS, TARGET = ("T1", "T2"), "FLAIR"


def library_seconds(family: str, files: dict[str, Path], out: Path, repeats: int) -> tuple[float, list[float]]:
    from medsynth_app.imageio import read_image, write_image
    from medsynth_app.pipeline import provenance_for, synthesize
    from medsynth_app.weights import find

    times, model = [], None
    for i in range(repeats + 1):
        started = time.perf_counter()
        if model is None:
            _, checkpoint = find(family, TARGET, list(INPUTS))
            model = checkpoint.build()
        images = {c: read_image(files[c]) for c in INPUTS}
        image = synthesize(checkpoint, images, TARGET, model=model)
        write_image(image, out / f"library_{family}_{i}.nii.gz", provenance_for(checkpoint, list(INPUTS), TARGET))
        times.append(time.perf_counter() - started)
    return times[0], times[1:]


def server_seconds(url: str, family: str, image_id: str, out: Path, repeats: int) -> tuple[float, list[float]]:
    import requests

    times = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        response = requests.post(f"{url}/infer/{family}", params={"image": image_id, "output": "image"},
                                 files={"params": (None, json.dumps({"target": TARGET}))}, timeout=900)
        response.raise_for_status()
        (out / f"server_{family}_{i}.nii.gz").write_bytes(response.content)
        times.append(time.perf_counter() - started)
    return times[0], times[1:]


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
        for contrast, path in files.items():
            (datastore / f"bench_{contrast}.nii.gz").symlink_to(path)
        for family in families:
            cold, warm = library_seconds(family, files, scratch, args.repeats)
            rows.append({"family": family, "where": "library", "cold_s": round(cold, 2),
                         "warm_median_s": round(statistics.median(warm), 2), "warm_s": [round(t, 2) for t in warm]})
            print(json.dumps(rows[-1]), flush=True)
        # the server computes with as many threads as this process (the launcher's default is 2)
        threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        with running_server(datastore, scratch / "server", conf_models=",".join(families),
                            conf={"user_models": str(scratch / "user_models")}, env=threads) as url:
            for family in families:
                cold, warm = server_seconds(url, family, "bench_T1", scratch, args.repeats)
                rows.append({"family": family, "where": "server", "cold_s": round(cold, 2),
                             "warm_median_s": round(statistics.median(warm), 2),
                             "warm_s": [round(t, 2) for t in warm]})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| model | library cold (s) | library warm (s) | server cold (s) | server warm (s) | warm server / library |")
    print("|---|---|---|---|---|---|")
    for family in families:
        lib, srv = (next(r for r in rows if r["family"] == family and r["where"] == w) for w in ("library", "server"))
        print(f"| {family} | {lib['cold_s']:.2f} | {lib['warm_median_s']:.2f} | {srv['cold_s']:.2f} | "
              f"{srv['warm_median_s']:.2f} | {srv['warm_median_s'] / lib['warm_median_s']:.2f} |")


if __name__ == "__main__":
    main()
