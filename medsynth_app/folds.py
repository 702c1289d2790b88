"""The subject-wise folds and cohorts of EVALUATION.md (committed as data/folds.json)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .studies import Study

DEFAULT_FOLDS = Path(__file__).parent / "data" / "folds.json"


@dataclass(frozen=True)
class Folds:
    folds: dict[str, list[str]]
    cohorts: dict[str, list[str]]

    @classmethod
    def load(cls, path: str | Path | None = None) -> Folds:
        path = Path(path or DEFAULT_FOLDS)
        try:
            data = json.loads(path.read_text())
            return cls({str(k): list(v) for k, v in data["folds"].items()}, dict(data.get("cohorts", {})))
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
