"""The subject-wise folds and cohorts of the evaluation protocol (EVALUATION.md; packaged as data/folds.json, or any
folds file given by path), and the one rule that holds validation studies out of a training set."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .studies import Study

DEFAULT_FOLDS = Path(__file__).parent / "data" / "folds.json"


@dataclass(frozen=True)
class Folds:
    folds: dict[str, list[str]]
    cohorts: dict[str, list[str]]
    left_out_cohorts: dict[str, list[str]] = field(default_factory=dict)
    same_patients: list[list[str]] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Folds:
        path = Path(path or DEFAULT_FOLDS)
        try:
            data = json.loads(path.read_text())
            return cls({str(k): list(v) for k, v in data["folds"].items()}, dict(data.get("cohorts", {})),
                       dict(data.get("left_out_cohorts", {})), [list(g) for g in data.get("same_patients", [])])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a folds file ({err})") from None

    def test_ids(self, fold: str | int) -> list[str]:
        if str(fold) not in self.folds:
            raise ValueError(f"no fold {fold}; folds are {', '.join(self.folds)}")
        return self.folds[str(fold)]

    def train_ids(self, fold: str | int) -> list[str]:
        test = set(self.test_ids(fold))
        return [sid for key, ids in self.folds.items() if key != str(fold) for sid in ids if sid not in test]

    def cohort(self, study_id: str) -> str:
        for name, prefixes in self.cohorts.items():
            if any(study_id.startswith(prefix) for prefix in prefixes):
                return name
        return "other"

    def split(self, studies: list[Study], fold: str | int) -> tuple[list[Study], list[Study]]:
        """(training studies, test studies) of ``fold`` among ``studies``."""
        by_id = {s.id: s for s in studies}
        train = [by_id[i] for i in self.train_ids(fold) if i in by_id]
        test = [by_id[i] for i in self.test_ids(fold) if i in by_id]
        return train, test

    def cohort_split(self, studies: list[Study], cohort: str) -> tuple[list[Study], list[Study]]:
        """(training studies, test studies) of leaving ``cohort`` out (``left_out_cohorts``): the test studies are
        the cohort's, the training studies every other study of the folds except those of a test patient
        (``same_patients``)."""
        if cohort not in self.left_out_cohorts:
            raise ValueError(f"no left-out cohort {cohort}; cohorts are {', '.join(self.left_out_cohorts)}")
        inside = lambda sid: any(sid.startswith(p) for p in self.left_out_cohorts[cohort])  # noqa: E731
        by_id = {s.id: s for s in studies}
        in_folds = [by_id[sid] for ids in self.folds.values() for sid in ids if sid in by_id]  # fold order
        test = [s for s in in_folds if inside(s.id)]
        tested = {s.id for s in test}
        shared = {sid for group in self.same_patients if tested & set(group) for sid in group}
        return [s for s in in_folds if not inside(s.id) and s.id not in shared], test


def validation_split(studies: Sequence[Study], share: float = 0.0, count: int | None = None,
                     named: Sequence[str] | None = None) -> tuple[list[Study], list[Study]]:
    """(train, validation), both in the order given: the ``named`` studies, or ``count`` of them (else a ``share``,
    at least one when the share is positive), never all. The studies held out are evenly spaced over the given order,
    first and last included (a single one: the middle one), so that validation spans the cohorts of a list sorted by
    id or by fold."""
    studies = list(studies)
    if named is not None:
        unknown = [i for i in named if i not in {s.id for s in studies}]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} not among the training studies")
        return [s for s in studies if s.id not in named], [s for s in studies if s.id in named]
    if count is None:
        count = max(1, int(round(len(studies) * share))) if share > 0 else 0
    count = min(count, len(studies) - 1) if len(studies) > 1 else 0
    if count == 1:
        picked = {len(studies) // 2}
    else:
        picked = {int(i) for i in np.linspace(0, len(studies) - 1, count).round()} if count else set()
    return ([s for i, s in enumerate(studies) if i not in picked], [s for i, s in enumerate(studies) if i in picked])
