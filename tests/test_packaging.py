"""`pip install .` as a user does it: the wheel, installed into a fresh venv, used from outside the checkout.

Slow (a fresh venv gets torch and every dependency; minutes, see docs/deployment.md) but run by default: it is the
only test of what a user installs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED
from server_fixture import free_port, write_crops

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")]
import requests  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SECONDS = 1800
PACKAGE_DATA = {"apps/medsynth": "medsynth_server/app", "slicer_extension": "medsynth_server/slicer"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, timeout=600)
    [built] = out.glob("medsynth-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) with the wheel and its pinned dependencies, in ONE pip command."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    started = time.time()
    # --no-compile: byte-compiling torch, itk and the rest costs CPU time and tests nothing of ours
    done = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--progress-bar", "off",
                           "--no-compile", "torch==2.13.0", str(wheel)], env=env, capture_output=True, text=True,
                          timeout=INSTALL_SECONDS)
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"\nwheel installed into a fresh venv in {time.time() - started:.0f} s")
    return folder


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> tuple[Path, dict]:
    """A working folder outside the checkout and the environment of a user's shell (no PYTHONPATH)."""
    folder = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MEDSYNTH_WEIGHTS", "MEDSYNTH_USER_MODELS")}
    env.update(MEDSYNTH_HOME=str(folder / "home"), OMP_NUM_THREADS="1")
    return folder, env


def _run(venv: Path, outside, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    folder, env = outside
    return subprocess.run([str(venv / "bin" / "medsynth"), *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_carries_the_app_its_weights_and_the_slicer_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for source, packaged in PACKAGE_DATA.items():
        tracked = subprocess.run(["git", "ls-files", source], cwd=ROOT, capture_output=True, text=True).stdout.split()
        if not tracked:  # not a git checkout
            tracked = [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*") if p.is_file()
                       and "__pycache__" not in p.parts]
        missing = [t for t in tracked if f"{packaged}/{Path(t).relative_to(source).as_posix()}" not in names
                   and not Path(t).name.startswith(".")]  # .gitignore
        assert not missing, f"not in the wheel: {missing}"
    assert "medsynth_server/app/model/linear_T1+T2_to_FLAIR.pt" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "demo = medsynth_server.commands:register_demo" in entry_points
    assert "shipped = medsynth_server.resources:weight_folders" in entry_points


def test_the_installed_cli_finds_the_shipped_weights_inside_the_package(venv, outside):
    done = _run(venv, outside, "models", "--json")
    assert done.returncode == 0, done.stderr
    paths = [Path(row["path"]) for row in json.loads(done.stdout)]
    assert len(paths) == len(list((ROOT / "apps" / "medsynth" / "model").glob("*.pt")))
    assert all("site-packages" in p.parts and p.parent.parts[-3:] == ("medsynth_server", "app", "model")
               and ROOT not in p.parents for p in paths)
    for command in ("demo", "serve", "model-versions"):
        assert _run(venv, outside, command, "--help").returncode == 0, command


def test_the_installed_cli_synthesises_flair_with_the_shipped_weights(venv, outside):
    folder, _ = outside
    crops = write_crops(SHARED, folder / "study", prefix="")
    out = folder / "synthetic_FLAIR.nii.gz"
    done = _run(venv, outside, "synthesize", "--model", "linear", "--target", "FLAIR",
                "--input", f"T1={crops / 'T1.nii.gz'}", "--input", f"T2={crops / 'T2.nii.gz'}", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "medsynth_server/app/model/linear_T1+T2_to_FLAIR.pt" in done.stdout
    result = sitk.ReadImage(str(out))
    assert result.GetMetaData("descrip").startswith("SYNTHETIC FLAIR")
    synthetic = sitk.GetArrayFromImage(result)
    acquired = sitk.GetArrayFromImage(sitk.ReadImage(str(crops / "FLAIR.nii.gz")))
    brain = synthetic > 0
    assert brain.mean() > 0.2 and np.corrcoef(synthetic[brain], acquired[brain])[0, 1] > 0.5


def test_medsynth_serve_runs_the_packaged_app_on_localhost(venv, outside):
    folder, env = outside
    datastore = write_crops(SHARED, folder / "datastore")
    port = free_port()
    log = folder / "serve.log"
    with open(log, "wb") as stream:
        proc = subprocess.Popen([str(venv / "bin" / "medsynth"), "serve", "--studies", str(datastore), "--port",
                                 str(port), "--models", "linear"], cwd=folder, env=env, stdout=stream,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        command = log.read_text().splitlines()[0]
        assert "-m monailabel.main start_server --app" in command and "--host 127.0.0.1" in command
        assert "site-packages/medsynth_server/app" in command
        response = requests.post(f"{url}/infer/linear", params={"image": "sub01_T1", "output": "json"},
                                 files={"params": (None, json.dumps({"target": "FLAIR"}))}, timeout=300)
        assert response.status_code == 200, response.text
        assert response.json()["checkpoint"] == "linear_T1+T2_to_FLAIR.pt"
        assert (folder / "home" / "server" / "app.log").is_file()  # logs under MEDSYNTH_HOME, not in the package
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
