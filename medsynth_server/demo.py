"""`medsynth demo`: FLAIR from T1+T2 for one study through a local MONAI Label server and the Slicer module's client.

Uses the first suitable study under $MEDSYNTH_DATA when set, else builds the simulated demo cohort; lays it out as a
flat datastore, starts the shipped MONAI Label app on 127.0.0.1 with the shipped weights, uploads T1+T2 as a session
and infers as the Slicer module does, then writes the synthetic NIfTI, a PNG montage and the metrics against the
acquired FLAIR.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from medsynth_app.comparison import montage, prepare_comparison, score
from medsynth_app.imageio import read_image
from medsynth_app.metrics import json_ready
from medsynth_app.simulation import simulate_cohort
from medsynth_app.studies import Study, find_studies

from . import launcher
from .slicer_lib import import_medsynth_lib

INPUTS, TARGET = ("T1", "T2"), "FLAIR"
PREFERRED_MODELS = ("replica", "lsdn", "linear")  # best validation PSNR first (apps/medsynth/model/README.md)
SINGLE_FILE = (".nii.gz", ".nii", ".nrrd", ".mha")  # formats a session upload and the flat datastore take


class DemoError(ValueError):
    """The demo cannot run; the command line prints the one-line message."""


@contextlib.contextmanager
def step(name: str, seconds: dict[str, float]) -> Iterator[None]:
    """Print the step's start and its elapsed time; record the time in ``seconds``."""
    print(f"[{len(seconds) + 1}] {name}...", flush=True)
    started = time.time()
    yield
    seconds[name] = round(time.time() - started, 1)
    print(f"    done in {seconds[name]:.1f} s", flush=True)


def _extension(path: Path) -> str | None:
    return next((ext for ext in SINGLE_FILE if path.name.lower().endswith(ext)), None)


def demo_study(out: Path) -> Study:
    """The first study with T1, T2 and FLAIR as single files: under $MEDSYNTH_DATA, else the simulated cohort."""
    root = os.environ.get("MEDSYNTH_DATA")
    if not root:
        root = out / "demo_studies"
        if not (root / "README.txt").exists():
            print(f"    building the simulated demo cohort in {root}", flush=True)
            simulate_cohort(root, n_subjects=1, seed=2026)
    for study in find_studies(root):
        files = [study.images.get(c) for c in (*INPUTS, TARGET)]
        if all(f is not None and f.is_file() and _extension(f) for f in files):
            return study
    raise DemoError(f"no study under {root} has T1, T2 and FLAIR as single files ({', '.join(SINGLE_FILE)})")


def build_datastore(study: Study, folder: Path) -> dict[str, Path]:
    """A fresh flat datastore of symbolic links to the study's files (<study>_T1.nii.gz, ...; the originals are never
    touched); returns contrast -> link."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    prefix = study.id.replace("/", "_")
    sources = {c: study.images[c] for c in (*INPUTS, TARGET)}
    sources |= {name: path for name, path in (("brainmask", study.brain_mask), ("lesion", study.lesion_mask))
                if path is not None and _extension(path)}
    links = {}
    for name, source in sources.items():
        links[name] = folder / f"{prefix}_{name}{_extension(source)}"
        links[name].symlink_to(source.resolve())
    return links


def choose_model(choices: dict[str, Any]) -> Any:
    """The first of PREFERRED_MODELS whose served checkpoints synthesise FLAIR from T1+T2 (``MedSynthLib.logic``
    ModelChoice objects from the server's /info)."""
    import_medsynth_lib()
    from MedSynthLib.logic import choose_inputs

    for name in PREFERRED_MODELS:
        choice = choices.get(name)
        if choice is None or TARGET not in choice.targets:
            continue
        try:
            if choose_inputs(choice, TARGET, INPUTS) == list(INPUTS):
                return choice
        except ValueError:
            continue
    raise DemoError(f"the server offers none of {', '.join(PREFERRED_MODELS)} for {'+'.join(INPUTS)}->{TARGET}; "
                    f"it serves: {', '.join(choices) or 'no synthesis model'}")


def synthesise_on_server(url: str, files: dict[str, Path], folder: Path) -> Any:
    """Upload the inputs as one session and infer with the Slicer module's own client and workflow; returns the
    finished ``SynthesisJob`` (result_path in ``folder``, the server's params)."""
    import_medsynth_lib()
    from MedSynthLib.client import MedSynthClient, MedSynthError
    from MedSynthLib.logic import model_choices
    from MedSynthLib.workflow import SynthesisJob, SynthesisWorkflow

    client = MedSynthClient(url)
    try:
        model = choose_model(model_choices(client.synthesis_models()))
        print(f"    model {model.name} (preferred: {', '.join(PREFERRED_MODELS)})", flush=True)
        job = SynthesisJob(model.name, TARGET, list(INPUTS), node_ids={}, transform_id=None, folder=folder,
                           node_names={c: files[c].name for c in INPUTS}, files={c: str(files[c]) for c in INPUTS})
        return SynthesisWorkflow(None, client).run(job, lambda fraction, message: print(f"    {message}", flush=True))
    except MedSynthError as err:
        raise DemoError(f"synthesis on {url} failed: {err}") from None
    finally:
        client.close()


def write_outputs(study: Study, job: Any, out: Path) -> dict[str, Any]:
    """The synthetic NIfTI (the server's file, renamed), the montage and the metrics; returns the report."""
    nifti = Path(job.result_path).replace(out / f"{study.id.replace('/', '_')}_{TARGET}_synthetic.nii.gz")
    subject = prepare_comparison(study, read_image(nifti), TARGET, INPUTS)
    metrics = {k: round(v, 4) for k, v in score(subject, TARGET).items()}
    figure = montage(subject, TARGET, INPUTS, out / "demo_montage.png",
                     f"{study.id}: {job.model} on the server, {lesion_summary(metrics)}PSNR "
                     f"{metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} (normalised, in brain)")
    return {"study": study.id, "model": job.model, "checkpoint": job.params.get("checkpoint"),
            "inputs": job.params.get("inputs"), "synthetic": str(nifti), "montage": str(figure), "metrics": metrics}


def serve_and_synthesise(out: Path, files: dict[str, Path], seconds: dict[str, float]) -> tuple[str, Any]:
    """Start the server on 127.0.0.1 over ``out``/datastore, synthesise through it, stop it; (its URL, the job)."""
    with contextlib.ExitStack() as server:
        with step("starting the MONAI Label server with the shipped weights", seconds):
            url = server.enter_context(launcher.running_server(
                out / "datastore", out / "server", conf_models=",".join(PREFERRED_MODELS), host="127.0.0.1",
                progress=lambda message: print(f"    {message}", flush=True)))
        with step(f"synthesising {TARGET} from {'+'.join(INPUTS)} with the Slicer module's client", seconds):
            job = synthesise_on_server(url, files, out)
        with step("stopping the server", seconds):
            server.close()
    return url, job


def lesion_summary(metrics: dict[str, float]) -> str:
    """"lesion conspicuity 1.05 (acquired 2.84, 3 % kept), " first in every line that gives PSNR; "" without a lesion."""
    if "lesion_conspicuity" not in metrics:
        return ""
    return (f"lesion conspicuity {metrics['lesion_conspicuity']:.2f} (acquired "
            f"{metrics['acquired_lesion_conspicuity']:.2f}, {100 * metrics['lesion_conspicuity_kept']:.0f} % kept), ")


def print_summary(report: dict[str, Any]) -> None:
    metrics, seconds = report["metrics"], report["seconds"]
    print(f"\n{report['study']}: {lesion_summary(metrics)}PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} "
          f"with {report['model']} ({sum(seconds.values()):.0f} s in all)")
    for name in ("synthetic", "montage", "metrics_file", "datastore", "server_log"):
        print(f"  {name.replace('_', ' '):13s} {report[name]}", flush=True)


def run_demo(out: Path) -> dict[str, Any]:
    if launcher.launcher() is None:
        raise DemoError("MONAI Label (the `monailabel` package) is not installed in this Python "
                        "(install MedSynth with `make install` or `pip install .`)")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    with step("building or finding the demo study", seconds):
        study = demo_study(out)
        print(f"    study {study.id}", flush=True)
    with step("laying out the datastore", seconds):
        files = build_datastore(study, out / "datastore")
    url, job = serve_and_synthesise(out, files, seconds)
    with step("scoring and drawing the montage", seconds):
        report = write_outputs(study, job, out)
    report |= {"metrics_file": str(out / "demo_metrics.json"), "server": url, "datastore": str(out / "datastore"),
               "server_log": str(out / "server" / "server.log"), "seconds": seconds}
    Path(report["metrics_file"]).write_text(json.dumps(json_ready(report), indent=2))
    print_summary(report)
    return report
