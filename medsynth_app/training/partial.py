"""Partial-training files: a run's state after each epoch (weights, optimiser, best weights, history), so that an
interrupted run resumes where it stopped; checked against the model it is meant to continue."""
from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_write
from ..task import Task

PARTIAL_FORMAT = "medsynth-partial/1"


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def default_partial_path(identity: dict, seed: int) -> Path:
    task = Task(identity.get("inputs", []), identity.get("targets", []))
    name = f"{identity.get('family', 'model')}_{task.slug}_seed{seed}"
    return Path(tempfile.gettempdir()) / "medsynth_partial" / (re.sub(r"[^A-Za-z0-9_+.-]", "_", name) + ".pt")


def load_partial(path: str | Path, identity: dict) -> dict:
    """A partial-training file written by `train_network`, checked against the model it is meant to continue."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such partial-training file to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged file: torch raises many types
        raise ValueError(f"{path}: not a readable partial-training file ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != PARTIAL_FORMAT:
        raise ValueError(f"{path}: not a MedSynth partial-training file")
    for key, value in identity.items():
        if state["identity"].get(key) != value:
            raise ValueError(f"{path}: was written for {key} {state['identity'].get(key)!r}, not {value!r}")
    return state



def write_partial(path: Path, identity: dict, network: nn.Module, optim, scaler, use_scaler: bool, epoch: int,
                   best_state, best_metric: float, best_epoch: int, bad_epochs: int, history: list,
                   seconds: float) -> None:
    data = {
        "format": PARTIAL_FORMAT,
        "identity": copy.deepcopy(identity),
        "epoch": epoch,
        "model": cpu_state(network),
        "optimizer": optim.state_dict(),
        "scaler": scaler.state_dict() if use_scaler else None,
        "best": best_state,
        "best_metric": best_metric,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
        "history": history,
        "seconds": seconds,
    }
    atomic_write(path, lambda tmp: torch.save(data, tmp))
