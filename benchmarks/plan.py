"""What the benchmark runs: tasks ("T1+T2->FLAIR") and model entries (a family with its schedule), read from
``benchmarks/plan.json`` or a copy of it. An entry may ``extend`` an earlier one (its fields, with its hyperparameters
updated by the entry's own) and says in ``reason`` why it is there."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from medsynth_app.models import TrainSettings, families, finishing_hparams
from medsynth_app.task import Task

DEFAULT_PLAN = Path(__file__).resolve().parent / "plan.json"


@dataclass(frozen=True)
class Entry:
    """One row of the report: a family trained with ``epochs`` and ``hparams``; ``validation`` carves one subject out
    of each fold's training subjects for early stopping (EVALUATION.md), for the families that stop early; ``lr``
    overrides the family's paper learning rate (None keeps it); ``batch_size`` is the training batch; ``subsets``
    also tests each fold's model with every proper non-empty subset of the task's inputs (families that accept
    missing inputs). ``reason``: one line, why the entry is in the plan. ``finishes``: an earlier entry whose fold checkpoints this one takes and gives the family's
    finishing step (`SynthesisModel.finish`, the last step of its fit) with its own finishing hyperparameters,
    instead of training again: what training with those would have given."""

    name: str
    family: str
    epochs: int = 10
    hparams: dict = field(default_factory=dict)
    validation: bool = False
    subsets: bool = False
    lr: float | None = None
    batch_size: int = TrainSettings.batch_size
    seeds: tuple[int, ...] = (TrainSettings.seed,)
    finishes: Entry | None = None
    reason: str = ""

    @property
    def slug(self) -> str:
        return self.name.replace("+", "_").replace("/", "_")


def _entry(m: dict, earlier: dict[str, Entry]) -> Entry:
    reason = str(m.get("reason", ""))
    if "finishes" in m:
        base = earlier.get(str(m["finishes"]))
        if base is None:
            raise ValueError(f"{m['name']}: finishes {m['finishes']!r}, which is not an earlier entry")
        own = dict(m.get("hparams", {}))
        foreign = sorted(set(own) - set(finishing_hparams(base.family)))
        if foreign:
            raise ValueError(f"{m['name']}: {', '.join(foreign)} not a finishing hyperparameter of {base.family} "
                             f"(those are: {', '.join(finishing_hparams(base.family)) or 'none'})")
        return replace(base, name=str(m["name"]), hparams={**base.hparams, **own}, finishes=base, reason=reason)
    if "extends" in m:
        base = earlier.get(str(m["extends"]))
        if base is None:
            raise ValueError(f"{m['name']}: extends {m['extends']!r}, which is not an earlier entry")
        changed = {key: value for key, value in _fields(m).items() if key in m and key != "hparams"}
        return replace(base, name=str(m["name"]), hparams={**base.hparams, **dict(m.get("hparams", {}))},
                       reason=reason, **changed)
    return Entry(name=str(m["name"]), family=str(m["family"]), reason=reason, **_fields(m))


def _fields(m: dict) -> dict:
    """The entry fields ``m`` sets, read with their defaults."""
    return {"epochs": int(m.get("epochs", 10)), "hparams": dict(m.get("hparams", {})),
            "validation": bool(m.get("validation", False)), "subsets": bool(m.get("subsets", False)),
            "lr": float(m["lr"]) if m.get("lr") is not None else None,
            "batch_size": int(m.get("batch_size", TrainSettings.batch_size)),
            "seeds": tuple(int(seed) for seed in m.get("seeds", [TrainSettings.seed]))}


@dataclass(frozen=True)
class Comparison:
    """A claim of the papers checked on every task where both models ran: in each pair the first model scores
    higher than the second in each of ``metrics`` (paired t-tests over the test subjects)."""

    title: str
    metrics: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Plan:
    primary: tuple[Task, ...]
    secondary: tuple[Task, ...]
    entries: tuple[Entry, ...]
    baselines: tuple[str, ...]
    comparisons: tuple[Comparison, ...] = ()

    @classmethod
    def load(cls, path: str | Path | None = None) -> Plan:
        path = Path(path or DEFAULT_PLAN)
        try:
            data = json.loads(path.read_text())
            earlier: dict[str, Entry] = {}
            for m in data["models"]:
                earlier.setdefault(str(m["name"]), _entry(m, earlier))
            entries = tuple(earlier.values())
            if len(entries) != len(data["models"]):
                raise ValueError("model names must be unique")
            comparisons = tuple(Comparison(str(c["title"]), tuple(c["metrics"]),
                                           tuple((str(a), str(b)) for a, b in c["pairs"]))
                                for c in data.get("comparisons", []))
            plan = cls(tuple(Task.parse(t) for t in data["tasks"]["primary"]),
                       tuple(Task.parse(t) for t in data["tasks"].get("secondary", [])),
                       entries, tuple(data.get("baselines", [])), comparisons)
        except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a benchmark plan ({err})") from None
        unknown = sorted({e.family for e in entries} - set(families()))
        if unknown:
            raise ValueError(f"{path}: unknown model famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}")
        for entry in entries:
            if not entry.seeds or len(set(entry.seeds)) != len(entry.seeds):
                raise ValueError(f"{path}: {entry.name}: seeds must be distinct and at least one")
        names = [e.name for e in entries]
        strangers = sorted({n for c in plan.comparisons for pair in c.pairs for n in pair} - set(names))
        if strangers:
            raise ValueError(f"{path}: comparisons name models the plan does not have: {', '.join(strangers)}")
        return plan

    def tasks(self, wanted: list[str] | None = None, secondary: bool = False) -> list[Task]:
        """The primary tasks (and the secondary ones with ``secondary``), or exactly ``wanted``."""
        if wanted:
            return [Task.parse(t) for t in wanted]
        return [*self.primary, *(self.secondary if secondary else ())]

    def select(self, names: list[str] | None = None) -> list[Entry]:
        if not names:
            return list(self.entries)
        by_name = {e.name.lower(): e for e in self.entries}
        missing = [n for n in names if n.lower() not in by_name]
        if missing:
            raise ValueError(f"no model {', '.join(missing)} in the benchmark plan; it has "
                             f"{', '.join(e.name for e in self.entries)}")
        return [by_name[n.lower()] for n in names]
