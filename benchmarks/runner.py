"""Train and score every benchmark entry on every fold of every task; one JSON file per (task, model, fold).

Layout of the output folder:

    runs/<task>/<model>/fold<k>.json      per-subject metrics, training summary and seconds of that fold
    runs/<task>/<model>/cohort-out-<c>.json the same, trained without cohort c and tested on it (--protocol)
    runs/<task>/<model>/timing.json       end-to-end seconds per volume (median of N) and peak memory
    slices/<task>/<model>/<subject>.npz   one axial slice of inputs, acquired target, prediction and mask (figures)
    checkpoints/<task>/<model>/fold<k>.pt the fold's weights (timing uses fold 1's); an entry with several seeds
                                          has fold<k>-seed<s>.pt, one per member of its ensemble (not timed);
                                          cohort-out-<c>.pt likewise
    partial/...                           partial-training files of the deep families while a fold trains

A file that exists is a step already done: running the same command again resumes where it stopped (an
interrupted deep-family fold continues from its partial-training file; a checkpoint is used again once it is checked
to be the entry's training of that fold and seed).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from medsynth_app import pipeline
from medsynth_app.atomic import atomic_write
from medsynth_app.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medsynth_app.folds import Folds, validation_split
from medsynth_app.metrics import json_ready
from medsynth_app.models import TrainSettings, finishing_hparams
from medsynth_app.preprocessing import PreparedSubject
from medsynth_app.studies import Study
from .machine import describe_device
from medsynth_app.task import Task, join

from .plan import Entry
from .timing import measure_in_subprocess

logger = logging.getLogger(__name__)


def cohort_out_name(cohort: str) -> str:
    """The name of a leave-one-cohort-out run's files: cohort-out-<cohort>.json beside fold<k>.json."""
    return f"cohort-out-{cohort}"


def write_json(path: Path, data) -> None:
    text = json.dumps(json_ready(data), indent=1, default=float)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def figure_subjects(studies: list[Study], folds: Folds, task: Task) -> dict[str, str]:
    """cohort -> the first test subject of that cohort, in fold order, holding the task's contrasts."""
    have = {s.id for s in studies if s.has(task.contrasts)}
    chosen: dict[str, str] = {}
    for fold in folds.folds:
        for sid in folds.test_ids(fold):
            if sid in have:
                chosen.setdefault(folds.cohort(sid), sid)
    return chosen


def timing_subject(studies: list[Study], folds: Folds, task: Task) -> Study | None:
    """The largest fold-1 test volume holding the task's contrasts (240x240x155 on the shared data)."""
    _, test = folds.split([s for s in studies if s.has(task.contrasts)], next(iter(folds.folds)))
    return max(test, key=lambda s: int(np.prod(s.describe()["shape"])), default=None)


def figure_slice(subject: PreparedSubject) -> int:
    """The axial slice with the most lesion voxels when there is a lesion mask, else the brain's middle slice."""
    if subject.lesion is not None and (subject.lesion & subject.mask).any():
        return int(np.argmax((subject.lesion & subject.mask).sum(axis=(0, 1))))
    slices = np.flatnonzero(subject.mask.any(axis=(0, 1)))
    return int(slices[len(slices) // 2])


def save_slices(path: Path, subject: PreparedSubject, prediction: np.ndarray, task: Task) -> None:
    k = figure_slice(subject)
    arrays = {f"input_{c}": subject.images[c][:, :, k] for c in task.inputs}
    arrays.update(target=subject.images[task.target][:, :, k], prediction=prediction[:, :, k],
                  mask=subject.mask[:, :, k])
    if subject.lesion is not None:
        arrays["lesion"] = subject.lesion[:, :, k]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})


def _check_timing_weights(weights: Path, entry: Entry, task: Task) -> None:
    checkpoint = load_checkpoint(weights)
    required, _ = checkpoint.input_roles()
    if (checkpoint.family != entry.family or task.target not in checkpoint.targets
            or not set(required) <= set(task.inputs) <= set(checkpoint.inputs)):
        raise ValueError(f"{weights}: a {checkpoint.family} {checkpoint.task} checkpoint cannot time {entry.name} "
                         f"({entry.family}) on {task.name}")


def _check_member(path: Path, checkpoint: Checkpoint, entry: Entry, task: Task, seed: int, train: list[Study],
                  validation: list[Study]) -> None:
    """A saved fold checkpoint must be the entry's training: family, task, hyperparameters, learning rate, seed (a
    checkpoint that predates the seed's record was trained with the default seed) and subjects."""
    training = checkpoint.training
    found = {"family": checkpoint.family, "inputs": list(checkpoint.inputs), "targets": list(checkpoint.targets),
             "hparams": {k: checkpoint.hparams.get(k) for k in entry.hparams},
             "seed": training.get("seed", TrainSettings.seed),
             "subjects": sorted([*training.get("subjects", []), *training.get("skipped", {})]),
             "validation_subjects": sorted(training.get("validation_subjects", []))}
    wanted = {"family": entry.family, "inputs": list(task.inputs), "targets": [task.target],
              "hparams": entry.hparams, "seed": seed,
              "subjects": sorted(s.id for s in train), "validation_subjects": sorted(s.id for s in validation)}
    if entry.lr is not None:
        found["learning_rate"], wanted["learning_rate"] = training.get("learning_rate"), entry.lr
    differ = [k for k in wanted if found[k] != wanted[k]]
    if differ:
        raise ValueError(f"{path}: not {entry.name}'s training of this fold and seed ({', '.join(differ)} differ: "
                         f"{', '.join(f'{found[k]} instead of {wanted[k]}' for k in differ)}); move it away to "
                         f"train again")


class Benchmark:
    def __init__(self, studies: list[Study], folds: Folds, out: Path, device: str = "auto", progress: bool = True,
                 timing_repeats: int = 5, timing_weights: dict[str, Path] | None = None):
        """``timing_weights``: entry name -> a checkpoint of the same network to time instead of the entry's fold-1
        weights (for a re-timing after those weights were deleted); it replaces the entry's earlier timing."""
        self.studies, self.folds, self.out = studies, folds, Path(out)
        self.device, self.progress, self.timing_repeats = device, progress, timing_repeats
        self.timing_weights = {name: Path(p) for name, p in (timing_weights or {}).items()}

    def _path(self, kind: str, task: Task, entry: Entry, name: str) -> Path:
        return self.out / kind / task.slug / entry.slug / name

    def run(self, tasks: list[Task], entries: list[Entry], only_folds: list[str] | None = None,
            protocols: tuple[str, ...] = ("folds",)) -> None:
        """Every fold (or ``only_folds``) of every entry on every task, then each entry's timing once its fold-1
        weights exist; with "cohort-out" in ``protocols`` also every left-out cohort of the folds file."""
        unknown = sorted(set(only_folds or ()) - set(self.folds.folds))
        if unknown:
            raise ValueError(f"no fold {', '.join(unknown)}; folds are {', '.join(self.folds.folds)}")
        for task in tasks:
            usable = [s for s in self.studies if s.has(task.contrasts)]
            if not usable:
                logger.warning("no study holds %s; task %s skipped", join(task.contrasts), task.name)
                continue
            for entry in entries:
                if "folds" in protocols:
                    for fold in self.folds.folds:
                        if not only_folds or fold in only_folds:
                            self.run_fold(task, entry, fold)
                    if self.timing_repeats > 0:
                        self.run_timing(task, entry)
                if "cohort-out" in protocols:
                    for cohort in self.folds.left_out_cohorts:
                        self.run_cohort_out(task, entry, cohort)

    def run_fold(self, task: Task, entry: Entry, fold: str) -> dict:
        train, test = self.folds.split([s for s in self.studies if s.has(task.contrasts)], fold)
        return self._run_split(task, entry, f"fold{fold}", f"fold {fold}", train, test, {"fold": fold})

    def run_cohort_out(self, task: Task, entry: Entry, cohort: str) -> dict | None:
        """Leave ``cohort`` out: train on every other cohort, test on it (None when it has no study of the task)."""
        train, test = self.folds.cohort_split([s for s in self.studies if s.has(task.contrasts)], cohort)
        if not test or not train:
            return None
        return self._run_split(task, entry, cohort_out_name(cohort), f"without {cohort}", train, test,
                               {"left_out_cohort": cohort})

    def _run_split(self, task: Task, entry: Entry, name: str, label: str, train: list[Study], test: list[Study],
                   split: dict) -> dict:
        """Train ``entry`` on ``train`` (less a validation study when it validates), score it on ``test`` and keep
        the result as runs/<task>/<model>/<name>.json."""
        result_path = self._path("runs", task, entry, f"{name}.json")
        if result_path.exists():
            return json.loads(result_path.read_text())
        train, validation = validation_split(train, count=1 if entry.validation else 0)
        self._say(f"{task.name} {entry.name} {label}: training on {len(train)} studies"
                  f"{f' (+1 validation: {validation[0].id})' if validation else ''}, testing on {len(test)}")
        members = [self._member(task, entry, name, seed, train, validation) for seed in entry.seeds]
        # the figures show fold test subjects; a left-out cohort's predictions must not replace their slices
        figures = set(figure_subjects(self.studies, self.folds, task).values()) if "fold" in split else set()

        def keep_slices(subject: PreparedSubject, prediction: np.ndarray) -> None:
            if subject.id in figures:
                save_slices(self._path("slices", task, entry, subject.id.replace("/", "__") + ".npz"),
                            subject, prediction, task)

        rows = pipeline.evaluate(members, test, task.target, task.inputs, progress=self.progress,
                                 on_prediction=keep_slices)
        self._tag_cohorts(rows)
        subsets = {}
        for subset in task.input_subsets() if entry.subsets else []:
            self._say(f"{task.name} {entry.name} {label}: testing with {join(subset)} only")
            subsets[join(subset)] = self._tag_cohorts(
                pipeline.evaluate(members, test, task.target, subset, progress=self.progress))
        result = {"task": task.name, "model": entry.name, "family": entry.family, **split,
                  "epochs": entry.epochs, "lr": entry.lr, "batch_size": entry.batch_size, "hparams": entry.hparams,
                  "seeds": list(entry.seeds), "train_subjects": [s.id for s in train],
                  "validation_subjects": [s.id for s in validation],
                  "train_seconds": round(sum(m.training["seconds"] for m in members), 1),
                  "training": members[0].training if len(members) == 1 else {"members": [m.training for m in members]},
                  "subjects": rows, "subsets": subsets,
                  "device": describe_device(self.device),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(result_path, result)
        return result

    def _member(self, task: Task, entry: Entry, split: str, seed: int, train: list[Study],
                validation: list[Study]) -> Checkpoint:
        """The entry's checkpoint of ``split`` ("fold1", "cohort-out-mni") trained with ``seed``: the saved one when
        there is one, else trained."""
        name = split if len(entry.seeds) == 1 else f"{split}-seed{seed}"
        path = self._path("checkpoints", task, entry, f"{name}.pt")
        if path.exists():
            checkpoint = load_checkpoint(path)
            _check_member(path, checkpoint, entry, task, seed, train, validation)
            return checkpoint
        if entry.finishes is not None:
            base = self._member(task, entry.finishes, split, seed, train, validation)
            self._say(f"{task.name} {entry.name} {split}: finishing {entry.finishes.name}'s checkpoint")
            checkpoint = pipeline.finish(
                base, train, validation,
                hparams={k: v for k, v in entry.hparams.items() if k in finishing_hparams(entry.family)},
                settings=TrainSettings(batch_size=entry.batch_size, device=self.device, seed=seed,
                                       progress=self.progress))
            save_checkpoint(checkpoint, path)
            return checkpoint
        partial = self._path("partial", task, entry, f"{name}.pt")
        partial.parent.mkdir(parents=True, exist_ok=True)
        settings = TrainSettings(epochs=entry.epochs, batch_size=entry.batch_size, learning_rate=entry.lr,
                                 device=self.device, seed=seed, progress=self.progress,
                                 resume_from=str(partial) if partial.exists() else None,
                                 extra={"partial_path": str(partial)})
        if len(entry.seeds) > 1:
            self._say(f"{task.name} {entry.name} {split}: training seed {seed}")
        checkpoint = pipeline.train(entry.family, task.inputs, [task.target], train, validation,
                                    hparams=entry.hparams, settings=settings)
        save_checkpoint(checkpoint, path)
        partial.unlink(missing_ok=True)
        return checkpoint

    def run_timing(self, task: Task, entry: Entry) -> dict | None:
        path = self._path("runs", task, entry, "timing.json")
        weights = self.timing_weights.get(entry.name)
        if weights is None and path.exists():
            return json.loads(path.read_text())
        study = timing_subject(self.studies, self.folds, task)
        if weights is not None:
            _check_timing_weights(weights, entry, task)
        else:
            weights = self._path("checkpoints", task, entry, f"fold{next(iter(self.folds.folds))}.pt")
        if study is None or not weights.exists():
            return None
        self._say(f"{task.name} {entry.name}: timing {self.timing_repeats} syntheses of {study.id} with {weights}")
        result = measure_in_subprocess(weights, {c: study.images[c] for c in task.inputs}, task.target,
                                       self.timing_repeats, self.device, self.out / "timing_scratch")
        result.update(study=study.id, shape=study.describe()["shape"], device=describe_device(self.device))
        if entry.name in self.timing_weights:
            result["weights"] = str(weights)
        write_json(path, result)
        return result

    def _tag_cohorts(self, rows: list[dict]) -> list[dict]:
        for row in rows:
            row["cohort"] = self.folds.cohort(row["id"])
        return rows

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)
