"""The interface every synthesis family implements, and the registry that names them."""
from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import numpy as np

from ..preprocessing import PreparedSubject
from ..task import join
from ..training.schedule import SCHEDULE_SETTINGS, Schedule

_REGISTRY: dict[str, type["SynthesisModel"]] = {}


@dataclass
class TrainSettings:
    """How to train: shared by every family (each uses what applies to it)."""

    epochs: int = 10
    batch_size: int = 16
    learning_rate: float | None = None  # None: the family's paper default
    device: str = "auto"
    seed: int = 0
    resume_from: str | None = None  # a partial checkpoint written during an interrupted run
    initial_state: dict | None = None  # weights the network starts from (fine-tuning a checkpoint); None: fresh
    progress: bool = True
    # Called after every epoch with {"epoch", "total_epochs", "best_metric", ...}; returning True stops training.
    on_epoch: Callable[[dict], bool | None] | None = None
    extra: dict = field(default_factory=dict)


class SynthesisModel(abc.ABC):
    """A model that predicts target contrasts from input contrasts on the prepared (normalised) grid."""

    family: ClassVar[str]
    description: ClassVar[str]
    fine_tunes: ClassVar[bool] = False  # fit starts from TrainSettings.initial_state when it is given
    finishing_hparams: ClassVar[tuple[str, ...]] = ()  # the hyperparameters of `finish` alone
    trains_on_a_schedule: ClassVar[bool] = False  # its training reads `schedule` (the deep families)
    schedule: Schedule = Schedule()  # set by `create` for the families that train on a schedule

    def __init__(self, inputs: Sequence[str], targets: Sequence[str], **hparams) -> None:
        if not inputs or not targets:
            raise ValueError(f"{self.family}: needs at least one input and one target contrast")
        overlap = set(inputs) & set(targets)
        if overlap:
            raise ValueError(f"{self.family}: {', '.join(sorted(overlap))} is both an input and a target")
        self.inputs = list(inputs)
        self.targets = list(targets)
        self.hparams = hparams

    def recorded_hparams(self) -> dict:
        """The hyperparameters a checkpoint records: the family's, and its training schedule where it has one."""
        return {**self.hparams, **(self.schedule.hparams() if self.trains_on_a_schedule else {})}

    def usable_inputs(self, available: Sequence[str]) -> list[str]:
        """The inputs this model will use out of ``available``; raises ValueError naming what is missing.

        Families that accept a subset of their inputs (multimodal) override this.
        """
        missing = [c for c in self.inputs if c not in available]
        if missing:
            raise ValueError(f"{self.family} needs {join(self.inputs)}; missing {join(missing)}")
        return list(self.inputs)

    def training_contrasts(self, available: Sequence[str]) -> list[str]:
        """The contrasts to read from a study holding ``available`` to train on it; empty when it cannot serve.

        A study must hold every input and target, except for families that train on incomplete studies."""
        wanted = list(dict.fromkeys([*self.inputs, *self.targets]))
        return wanted if all(c in available for c in wanted) else []

    def starting_weights(self, state: dict, inputs: Sequence[str], targets: Sequence[str]) -> dict:
        """The weights a fine-tune of this model starts from, out of a checkpoint of the same family trained for
        ``inputs`` -> ``targets``: the same task only (raises ValueError saying what must match)."""
        if (list(inputs), list(targets)) != (self.inputs, self.targets):
            raise ValueError("the inputs (in order) and the targets must be the checkpoint's")
        return state

    @abc.abstractmethod
    def fit(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        """Train on prepared subjects; returns a summary (epochs run, validation metrics...)."""

    def finish(self, train: list[PreparedSubject], validation: list[PreparedSubject], settings: TrainSettings) -> dict:
        """The last step of `fit`, on trained weights, governed by ``finishing_hparams`` alone: a trained model can be
        given it again with other values of those (`pipeline.finish`). Returns its summary; none by default."""
        return {}

    @abc.abstractmethod
    def predict(self, subject: PreparedSubject, target: str) -> np.ndarray:
        """The normalised target on the subject's prepared grid (same shape as ``subject.mask``)."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Tensors and plain values that restore the trained model (safe for ``torch.load(weights_only=True)``)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        ...


def register(cls: type[SynthesisModel]) -> type[SynthesisModel]:
    _REGISTRY[cls.family] = cls
    return cls


def families() -> list[str]:
    return sorted(_REGISTRY)


def _family(family: str) -> type[SynthesisModel]:
    if family not in _REGISTRY:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(families())}")
    return _REGISTRY[family]


def fine_tunes(family: str) -> bool:
    """Whether ``family`` can be trained on from a checkpoint's weights (fine-tuning) rather than only from scratch."""
    return _family(family).fine_tunes


def finishing_hparams(family: str) -> tuple[str, ...]:
    """The hyperparameters of ``family``'s finishing step (`SynthesisModel.finish`)."""
    return _family(family).finishing_hparams


def create(family: str, inputs: Sequence[str], targets: Sequence[str], **hparams) -> SynthesisModel:
    """A ``family`` model; for a family that trains on a schedule, the schedule settings among ``hparams`` become its
    `Schedule` and the others go to its constructor."""
    cls = _family(family)
    schedule = None
    if cls.trains_on_a_schedule:
        schedule = Schedule.from_hparams(hparams)
        hparams = {k: v for k, v in hparams.items() if k not in SCHEDULE_SETTINGS}
    parameters = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        known = [name for name in parameters if name not in ("self", "inputs", "targets")]
        unknown = sorted(set(hparams) - set(known))
        if unknown:
            raise ValueError(f"{family}: unknown hyperparameter {', '.join(unknown)} (known: {', '.join(known)})")
    model = cls(inputs, targets, **hparams)
    if schedule is not None:
        model.schedule = schedule
    return model
