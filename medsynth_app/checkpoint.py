"""One checkpoint format for every family: a single torch file holding weights and everything needed to use them.

Fields: format, family, inputs, targets, hparams, preprocessing (normalisation, divisor), target_norms (the typical
intensity scale of each target in the training data, to return outputs on it), training (subjects, epochs,
validation metrics, time), library_version, created, state (the family's weights). Written atomically; loaded with
``torch.load(weights_only=True)`` so a checkpoint cannot run code.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import __version__
from .atomic import atomic_write
from .models import create
from .models.base import SynthesisModel
from .normalization import IntensityNorm
from .task import Task

FORMAT = "medsynth-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    family: str
    inputs: list[str]
    targets: list[str]
    hparams: dict
    state: dict
    preprocessing: dict = field(default_factory=lambda: {"normalisation": "mean", "divisor": 16})
    target_norms: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    library_version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    format: str = FORMAT

    def build(self) -> SynthesisModel:
        model = create(self.family, self.inputs, self.targets, **self.hparams)
        model.load_state_dict(self.state)
        return model

    def target_norm(self, target: str) -> IntensityNorm:
        if target not in self.target_norms:
            raise CheckpointError(f"{self.family} checkpoint has no intensity scale for {target}")
        return IntensityNorm.from_dict(self.target_norms[target])

    def input_roles(self) -> tuple[list[str], list[str]]:
        """(required, optional) inputs: an input is optional when the family still accepts the others without it
        (families that take subsets override ``usable_inputs``)."""
        model = create(self.family, self.inputs, self.targets, **self.hparams)
        required, optional = [], []
        for contrast in self.inputs:
            try:
                model.usable_inputs([c for c in self.inputs if c != contrast])
                optional.append(contrast)
            except ValueError:
                required.append(contrast)
        return required, optional

    @property
    def task(self) -> str:
        return str(Task(self.inputs, self.targets))

    def summary(self) -> dict:
        """Everything but the weights (for listings and model cards)."""
        data = asdict(self)
        data.pop("state")
        return data

    @classmethod
    def from_model(cls, model: SynthesisModel, **fields) -> Checkpoint:
        return cls(family=model.family, inputs=list(model.inputs), targets=list(model.targets),
                   hparams=_plain(model.recorded_hparams()), state=model.state_dict(), **fields)


def _plain(value):
    """Tuples -> lists so the metadata survives ``weights_only`` loading and JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write atomically: a temporary file in the same folder, fsynced, then renamed over ``path``."""
    data = _plain(asdict(checkpoint)) | {"state": checkpoint.state}
    return atomic_write(Path(path), lambda tmp: torch.save(data, tmp))


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(f"{path}: not a readable MedSynth checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160] if str(err) else 'damaged file'})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a MedSynth checkpoint (format {data.get('format') if isinstance(data, dict) else None!r}, "
                              f"expected {FORMAT!r})")
    known = set(Checkpoint.__dataclass_fields__)
    return Checkpoint(**{k: v for k, v in data.items() if k in known})
