"""Start the shipped MedSynth MONAI Label app as a local server subprocess; used by the demo and the tests.

The server runs with this interpreter (MONAILABEL_PYEXE) and the ``medsynth_app`` library this process imports,
tracking off, sessions and logs under ``work`` (never in the app folder), only the app's own weights, in its own
process group, which is killed on exit.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable, Iterator, Mapping

from .resources import APP_DIR

STARTUP_SECONDS = 240
Progress = Callable[[str], None]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def launcher() -> list[str] | None:
    """``monailabel``'s command line run with this interpreter (what the ``monailabel`` launcher script runs, without
    the folder it prepends to PYTHONPATH), or None when MONAI Label is not installed."""
    if importlib.util.find_spec("monailabel") is None:
        return None
    return [sys.executable, "-m", "monailabel.main"]


def library_root() -> str:
    """The folder holding the ``medsynth_app`` this process imports: the server must run the same library."""
    import medsynth_app

    return str(Path(medsynth_app.__file__).resolve().parents[1])


def isolated_env(work: Path) -> dict[str, str]:
    """Environment giving a local server a user model folder under ``work``, not the user's own."""
    return {"MEDSYNTH_HOME": str(work / "home"), "MEDSYNTH_USER_MODELS": ""}


def server_env(work: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MONAILABEL_PYEXE=sys.executable,
        MONAI_LABEL_TRACKING_ENABLED="false",  # its MLflow store is not installed
        MONAI_LABEL_SESSION_PATH=str(work / "sessions"),
        PYTHONPATH=os.pathsep.join(p for p in (library_root(), env.get("PYTHONPATH", "")) if p),
        OMP_NUM_THREADS="2",
    )
    env.pop("MEDSYNTH_WEIGHTS", None)  # serve the app's own model/ folder only
    env.update(extra or {})
    return env


def log_config(work: Path) -> Path:
    """MONAI Label's logging.json pointed at ``work``: without it the server logs into <app>/logs."""
    import monailabel

    text = (Path(monailabel.__file__).parent / "logging.json").read_text()
    path = work / "logging.json"
    path.write_text(text.replace("${LOGFILE}", str(work / "app.log")).replace("${LOGDIR}", str(work)))
    return path


def _wait_until_up(proc: subprocess.Popen, url: str, log: IO[bytes], log_path: Path, startup_seconds: float,
                   progress: Progress | None) -> None:
    import requests

    def tail() -> str:
        log.flush()
        return log_path.read_text(errors="replace")[-4000:]

    started = last_report = time.time()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}:\n{tail()}")
        try:
            if requests.get(f"{url}/info/", timeout=5).status_code in (200, 401):  # 401: up, authentication on
                return
        except requests.RequestException:
            pass
        now = time.time()
        if now - started > startup_seconds:
            raise RuntimeError(f"server not up after {startup_seconds} s:\n{tail()}")
        if progress and now - last_report >= 10:
            progress(f"still starting ({now - started:.0f} s)...")
            last_report = now
        time.sleep(0.5)


def _stop(proc: subprocess.Popen, url: str) -> None:
    import requests

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


@contextlib.contextmanager
def running_server(datastore: Path, work: Path, conf_models: str = "all", host: str = "127.0.0.1",
                   startup_seconds: float = STARTUP_SECONDS, progress: Progress | None = None,
                   app: Path = APP_DIR, conf: Mapping[str, str] | None = None,
                   env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start ``monailabel start_server`` on a free port of ``host`` serving ``datastore``; yields its URL; kills its
    process group on exit. FileNotFoundError when the launcher is missing; RuntimeError with the log's tail when
    the server does not come up. ``conf`` adds ``--conf`` pairs, ``env`` environment variables of the server. The
    server keeps what it writes (trained models) under ``work`` unless ``conf`` or ``env`` say otherwise."""
    exe = launcher()
    if not exe:
        raise FileNotFoundError("MONAI Label is not installed")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    url = f"http://{host}:{port}"
    log_path = work / "server.log"
    cmd = [*exe, "start_server", "--app", str(app), "--studies", str(datastore), "--host", host, "--port", str(port),
           "--log_config", str(log_config(work)), "--conf", "models", conf_models]
    for key, value in (conf or {}).items():
        cmd += ["--conf", key, str(value)]
    if progress:
        progress(f"starting the MONAI Label server at {url} (log: {log_path})")
    with open(log_path, "wb") as log:
        environment = server_env(work, {**isolated_env(work), **(env or {})})
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=work,
                                start_new_session=True)
        try:
            _wait_until_up(proc, url, log, log_path, startup_seconds, progress)
            yield url
        finally:
            _stop(proc, url)
