"""``medsynth demo`` and ``medsynth serve``: subcommands the ``medsynth`` CLI finds in the entry-point group
``medsynth.commands`` (each entry point is a ``register(subparsers)``). Heavy libraries are imported when a command
runs, never when it is registered."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .resources import medsynth_home, user_models

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    demo(Path(args.out))
    return 0


def register_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="synthesise FLAIR for a demo study through a local MONAI Label server")
    p.add_argument("--out", default="demo_output")
    p.set_defaults(func=run_demo)


def serve_command(args: argparse.Namespace) -> tuple[str, list[str], dict[str, str]]:
    """(executable, argv, environment) of ``monailabel start_server`` serving the shipped app over ``--studies``."""
    from .launcher import launcher, log_config, server_env
    from .resources import APP_DIR

    exe = launcher()
    if exe is None:
        raise ValueError("MONAI Label (the `monailabel` package) is not installed in this Python")
    work = Path(args.work or medsynth_home() / "server").resolve()
    work.mkdir(parents=True, exist_ok=True)
    argv = [*exe, "start_server", "--app", str(APP_DIR), "--studies", str(args.studies), "--host", args.host,
            "--port", str(args.port), "--log_config", str(log_config(work)), "--conf", "models", args.models,
            "--conf", "user_models", str(Path(args.user_models or user_models()).resolve())]
    for key, value in args.conf:
        argv += ["--conf", key, value]
    return exe[0], argv, server_env(work)


def run_serve(args: argparse.Namespace) -> int:
    exe, argv, env = serve_command(args)
    print(" ".join(argv), flush=True)
    os.execve(exe, argv, env)  # the server takes this process over: signals reach it directly
    return 0  # pragma: no cover - execve does not return


def register_serve(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve the shipped MONAI Label app (monailabel start_server)")
    p.add_argument("--studies", required=True, help="datastore: a folder of studies, or a DICOMweb URL")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine "
                                                        "only; the server has no authentication unless configured)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--models", default="all", help="model families to serve: all, or a comma list")
    p.add_argument("--user-models", help="versioned folder for checkpoints trained through the server "
                                         "(default $MEDSYNTH_USER_MODELS, else $MEDSYNTH_HOME/models, "
                                         "MEDSYNTH_HOME being ~/.medsynth)")
    p.add_argument("--work", help="sessions and logs (default $MEDSYNTH_HOME/server)")
    p.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="more MONAI Label --conf pairs for the app")
    p.set_defaults(func=run_serve)


def run_model_versions(args: argparse.Namespace) -> int:
    from medsynth_app.checkpoint_versions import CheckpointVersions

    versions = CheckpointVersions(Path(args.user_models or user_models()))
    if args.restore:
        restored = versions.restore_previous(args.restore)
        print(f"{args.restore}: now serving {restored.name if restored else 'the shipped checkpoint'}")
        return 0
    names = sorted({f"{folder.name}.pt" for folder in (versions.root / "versions").glob("*") if folder.is_dir()})
    for name in names:
        served = versions.served(name)
        print(f"{name}: versions {', '.join(p.name for p in versions.versions(name))}; served "
              f"{served.name if served else 'the shipped checkpoint'}")
    print(f"{len(names)} retrained tasks in {versions.root}")
    return 0


def register_model_versions(subparsers) -> None:
    p = subparsers.add_parser("model-versions", help="list the checkpoints trained through the server, or restore "
                                                     "the one served before")
    p.add_argument("--user-models", help="the server's user model folder (default $MEDSYNTH_USER_MODELS, else "
                                         "$MEDSYNTH_HOME/models)")
    p.add_argument("--restore", metavar="CHECKPOINT", help="serve the version of CHECKPOINT (file name, e.g. "
                                                           "linear_T1+T2_to_FLAIR.pt) served before the current one")
    p.set_defaults(func=run_model_versions)
