"""The training schedule: how long and how a deep family trains (patience, min_delta, validate_every,
max_steps_per_epoch, amp, lr_schedule, sampling, workers), apart from its architecture and loss hyperparameters.

A deep family holds its `Schedule` apart from its architecture and loss hyperparameters (``model.schedule``); `create`
takes the settings out of the hyperparameters it is given (the CLI's --hparam, the benchmark plan, and checkpoints,
which record them among their hyperparameters as they always did, so that older checkpoints load unchanged).
`Schedule.of` is the one place a run looks them up: ``TrainSettings.extra`` first, then the model's schedule. ``max_steps_per_epoch``,
``amp`` and ``validate_every`` set the schedule and arithmetic, not the model: `resumable_hparams` leaves them out of
the identity a resumed run must match."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ..models.base import TrainSettings

AMP_MODES = ("auto", "bf16", "off")
LR_SCHEDULES = ("constant", "cosine")
SAMPLINGS = ("uniform", "per_study")
SCHEDULE_HPARAMS = ("max_steps_per_epoch", "amp", "validate_every")


def amp_mode(amp) -> str:
    """The ``amp`` setting checked: one of AMP_MODES; booleans stand for "auto" (True) and "off" (False)."""
    mode = ("auto" if amp else "off") if isinstance(amp, bool) else str(amp)
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, not {amp!r}")
    return mode


def lr_schedule_name(schedule) -> str:
    """The ``lr_schedule`` setting checked: one of LR_SCHEDULES."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {schedule!r}")
    return str(schedule)


def sampling_name(sampling) -> str:
    """The ``sampling`` setting checked: one of SAMPLINGS."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
    return str(sampling)


def scheduled_lr(lr: float, schedule: str, step: int, total_steps: int) -> float:
    """The learning rate of global ``step`` (0-based) of a run of ``total_steps`` under ``schedule``. The closed form
    of torch's CosineAnnealingLR (eta_min 0), computed from the step rather than chained from the previous rate, so
    that a resumed run needs no scheduler state."""
    if schedule == "constant":
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))


def resumable_hparams(hparams: dict, finishing: Sequence[str] = ()) -> dict:
    """The hyperparameters a resumed run must share with the interrupted one: SCHEDULE_HPARAMS and the model's
    ``finishing`` ones (`SynthesisModel.finishing_hparams`, which act after the training) left out."""
    return {k: v for k, v in hparams.items() if k not in SCHEDULE_HPARAMS and k not in finishing}



@dataclass(frozen=True)
class Schedule:
    """The schedule settings of one training run, checked."""

    patience: int = 10
    min_delta: float = 0.0
    validate_every: int = 1
    max_steps_per_epoch: int | None = None
    amp: str = "auto"
    lr_schedule: str = "constant"
    sampling: str = "uniform"
    lesion_share: float = 0.0
    workers: int = 0

    def __post_init__(self):
        if self.validate_every < 1:
            raise ValueError(f"validate_every must be >= 1, got {self.validate_every}")
        amp_mode(self.amp)
        lr_schedule_name(self.lr_schedule)
        sampling_name(self.sampling)
        if not 0 <= self.lesion_share < 1:
            raise ValueError(f"lesion_share must be in [0, 1), got {self.lesion_share}")

    @classmethod
    def from_hparams(cls, values: dict) -> Schedule:
        """The schedule of the settings among ``values`` (the others are ignored), each checked."""
        return cls().updated(values)

    def updated(self, values: dict) -> Schedule:
        """This schedule with the settings among ``values`` (None: unchanged) replaced."""
        changed = {f.name: CHECKS[f.name](values[f.name]) for f in fields(self) if values.get(f.name) is not None}
        return replace(self, **changed)

    @classmethod
    def of(cls, settings: TrainSettings, schedule: Schedule | None = None) -> Schedule:
        """The run's schedule: ``schedule`` (the model's) with the settings of ``settings.extra`` replacing its own."""
        return (schedule or cls()).updated(settings.extra)

    def hparams(self) -> dict:
        """The settings as a family's checkpoint records them among its hyperparameters (``workers`` is a property of
        the machine, not of the training)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "workers"}


SCHEDULE_SETTINGS = tuple(f.name for f in fields(Schedule) if f.name != "workers")
CHECKS = {"patience": int, "min_delta": float, "validate_every": int, "max_steps_per_epoch": int, "amp": amp_mode,
          "lr_schedule": lr_schedule_name, "sampling": sampling_name, "lesion_share": float, "workers": int}
