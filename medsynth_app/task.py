"""A synthesis task: input contrasts -> target contrasts, written "T1+T2->FLAIR" (file names: "T1+T2_to_FLAIR")."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

from .contrasts import canonical_contrast

ARROW, FILE_ARROW = "->", "_to_"


@dataclass(frozen=True)
class Task:
    inputs: tuple[str, ...]
    targets: tuple[str, ...]

    def __init__(self, inputs: Sequence[str], targets: Sequence[str] | str):
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "targets", (targets,) if isinstance(targets, str) else tuple(targets))

    @classmethod
    def parse(cls, text: str) -> Task:
        """"T1+T2->FLAIR" (contrast names in any spelling `canonical_contrast` knows) or its file-name form."""
        arrow = ARROW if ARROW in text else FILE_ARROW
        left, found, right = text.partition(arrow)
        if not found or not left.strip() or not right.strip():
            raise ValueError(f"a task reads INPUT[+INPUT...]->TARGET, e.g. T1+T2->FLAIR; got {text!r}")
        return cls([canonical_contrast(c) for c in left.split("+") if c.strip()],
                   [canonical_contrast(c) for c in right.split("+") if c.strip()])

    def __str__(self) -> str:
        return f"{join(self.inputs)}{ARROW}{join(self.targets)}"

    @property
    def name(self) -> str:
        return str(self)

    @property
    def slug(self) -> str:
        """The task's name as a file name: T1+T2_to_FLAIR."""
        return f"{join(self.inputs)}{FILE_ARROW}{join(self.targets)}"

    @property
    def target(self) -> str:
        """The target of a single-target task."""
        if len(self.targets) != 1:
            raise ValueError(f"{self} has {len(self.targets)} targets, not one")
        return self.targets[0]

    @property
    def contrasts(self) -> list[str]:
        return [*self.inputs, *self.targets]

    def input_subsets(self) -> list[tuple[str, ...]]:
        """Every proper non-empty subset of the inputs, largest first: T1+T1C+T2 -> T1+T1C, T1+T2, T1C+T2, T1, ..."""
        return [c for n in range(len(self.inputs) - 1, 0, -1) for c in itertools.combinations(self.inputs, n)]


def join(contrasts: Sequence[str]) -> str:
    """Contrasts as a task writes them: T1+T2."""
    return "+".join(contrasts)
