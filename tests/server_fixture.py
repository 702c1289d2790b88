"""A real MedSynth MONAI Label server (apps/medsynth) for tests, and its flat datastore of real crops.

Used by the Slicer extension's tests; the same start-up as tests/test_monailabel_app.py (tracking off, our Python for
the launcher, sessions and logs in a temporary folder), kept in this helper so test modules do not import each
other. Each test module starts at most one server (a module-scoped fixture around :func:`running_server`), and the
server's whole process group is killed when the module is done.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "medsynth"
SLICER_MODULE_DIR = REPO / "slicer_extension" / "MedSynth"
# SimpleITK (i, j, k): centred left-right, from the back of the head (j = 0, so the crop reaches the background),
# through the ventricles; 80x96x24 voxels.
CROP_START, CROP_SIZE = [51, 0, 70], [80, 96, 24]
STARTUP_SECONDS = 240


def patient_dir(shared: Path) -> Path:
    return shared / "open_ms_data" / "mni" / "patient07"


def write_crops(shared: Path, root: Path, prefix: str = "sub01_", contrasts=("T1", "T2", "FLAIR")) -> Path:
    """Crops of mni patient07 written as <prefix><contrast>.nii.gz, geometry kept."""
    root.mkdir(parents=True, exist_ok=True)
    for contrast in contrasts:
        image = sitk.ReadImage(str(patient_dir(shared) / f"{contrast}.nii.gz"))
        sitk.WriteImage(sitk.RegionOfInterest(image, CROP_SIZE, CROP_START), str(root / f"{prefix}{contrast}.nii.gz"))
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher() -> str | None:
    beside = Path(sys.executable).parent / "monailabel"
    return str(beside) if beside.exists() else shutil.which("monailabel")


@contextlib.contextmanager
def running_server(datastore: Path, work: Path, conf_models: str = "linear", app: Path = APP) -> Iterator[str]:
    """Start ``monailabel start_server`` on a free port; yields its URL; kills its process group on exit.
    Raises RuntimeError with the log's tail when it does not come up."""
    import requests

    exe = launcher()
    if not exe:
        raise FileNotFoundError("the monailabel launcher is not installed")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MONAILABEL_PYEXE=sys.executable,
        MONAI_LABEL_TRACKING_ENABLED="false",
        MONAI_LABEL_SESSION_PATH=str(work / "sessions"),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        OMP_NUM_THREADS="2",
    )
    env.pop("MEDSYNTH_WEIGHTS", None)  # serve the app's own model/ folder only
    import monailabel

    config = (Path(monailabel.__file__).parent / "logging.json").read_text()
    log_config = work / "logging.json"
    log_config.write_text(config.replace("${LOGFILE}", str(work / "app.log")).replace("${LOGDIR}", str(work)))
    log_path = work / "server.log"
    log = open(log_path, "wb")
    cmd = [exe, "start_server", "--app", str(app), "--studies", str(datastore), "--host", "127.0.0.1",
           "--port", str(port), "--log_config", str(log_config), "--conf", "models", conf_models]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        log.flush()
        return log_path.read_text(errors="replace")[-4000:]

    try:
        deadline = time.time() + STARTUP_SECONDS
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with status {proc.returncode}:\n{tail()}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server not up after {STARTUP_SECONDS} s:\n{tail()}")
            time.sleep(0.5)
        yield url
    finally:
        try:  # a training subprocess outlives the server: stop it first
            requests.delete(f"{url}/train/", timeout=30)
        except requests.RequestException:
            pass
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def import_medsynth_lib():
    """Put the Slicer module's folder on sys.path so that ``MedSynthLib`` imports as it does inside Slicer."""
    path = str(SLICER_MODULE_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    import MedSynthLib  # noqa: F401

    return MedSynthLib
