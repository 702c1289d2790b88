"""Shared TaskConfig of a MedSynth model family: serves every installed checkpoint of the family as one infer task,
and trains new ones with one train task.

A family config only names its family; ``lib/configs/<family>.py`` subclasses :class:`SynthesisTaskConfig`.

Checkpoints come from the library's checkpoint store (``medsynth_app.weights``), searched in this order, a file name
seen twice being taken from the first folder: the folders of ``MEDSYNTH_WEIGHTS``, the served versions of the user
model folder (where the app's trainers write, :func:`user_models_dir`), the app's own ``model`` folder (the shipped
weights), then the folders installed packages declare.

The served set is re-read whenever a checkpoint file appears, disappears or changes: a trainer running in MONAI
Label's training subprocess promotes its checkpoint, and the next infer request or ``/info`` of the server serves
it, without restart. A file that was served and is then replaced by one that does not load (damaged, truncated) is
logged as an error and the weights loaded from it before keep being served.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from medsynth_app.checkpoint import Checkpoint
from medsynth_app.checkpoint_versions import CheckpointVersions
from medsynth_app.weights import CheckpointStore
from medsynth_server.resources import user_models

from lib.infers.synthesis import SynthesisInferTask
from lib.trainers.synthesis import SynthesisTrainTask

logger = logging.getLogger(__name__)


def user_models_dir(conf: Dict[str, str]) -> Path:
    """The versioned folder of checkpoints trained through the server: ``--conf user_models DIR``, else
    $MEDSYNTH_USER_MODELS, else $MEDSYNTH_HOME/models (MEDSYNTH_HOME defaulting to ~/.medsynth). Never the app's
    ``model`` folder, which holds the shipped, version-controlled weights."""
    return Path(conf.get("user_models") or user_models()).expanduser().resolve()


class SynthesisTaskConfig(TaskConfig):
    family: str = ""
    description: str = ""

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self._lock = threading.RLock()
        self.user_models = CheckpointVersions(user_models_dir(conf))
        self.store = CheckpointStore([self.user_models.served_dir, model_dir])
        self._tasks: List[SynthesisInferTask] = []
        self.checkpoints: List[Tuple[Path, Checkpoint]] = []
        self.refresh()
        logger.info("+++ %s: %d checkpoint(s): %s", self.family, len(self.checkpoints),
                    ", ".join(p.name for p, _ in self.checkpoints))

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Re-read the checkpoint folders (the store loads only files that are new or changed). Returns True when
        the served set changed, and then updates the infer tasks built by :meth:`infer`."""
        with self._lock:
            found = self.store.checkpoints(self.family)
            old = [(str(p), id(c)) for p, c in self.checkpoints]
            self.checkpoints = found
            self.path = [str(p) for p, _ in found]
            changed = old != [(str(p), id(c)) for p, c in found]
            if changed and self._tasks:
                logger.info("+++ %s: serving %s", self.family, ", ".join(f"{p.name} ({c.created})" for p, c in found))
                for task in self._tasks:
                    _update_infer_task(task, found)
            return changed

    def infer(self) -> Dict[str, InferTask]:
        """The family's infer task, also without a checkpoint: MONAI Label leaves it out of /info until a training
        writes one (it has no valid path), and the task answers 404 meanwhile."""
        if not self.checkpoints:
            logger.warning("no installed %s checkpoint yet; /infer/%s answers 404 until one is trained",
                           self.family, self.name)
        task = _ReloadingInferTask(self, self.family, self.checkpoints, self.description)
        self._tasks.append(task)
        return {self.name: task}

    def trainer(self) -> Optional[TrainTask]:
        return SynthesisTrainTask(self)


def _update_infer_task(task: SynthesisInferTask, checkpoints: List[Tuple[Path, Checkpoint]]) -> None:
    """Point an existing infer task at a new checkpoint set (what its constructor derives from the set)."""
    if not checkpoints:
        return  # keep serving what was loaded rather than nothing; the file is gone, the weights are in memory
    targets = list(dict.fromkeys(t for _, c in checkpoints for t in c.targets))
    task.checkpoints = [(Path(p), c) for p, c in checkpoints]
    task.targets = targets
    task.path = [str(p) for p, _ in checkpoints]
    config = getattr(task, "_config", None)
    if isinstance(config, dict) and "target" in config:
        config["target"] = list(targets)


class _ReloadingInferTask(SynthesisInferTask):
    """The family's infer task, re-reading changed checkpoints before each request and each /info."""

    def __init__(self, owner: SynthesisTaskConfig, *args, **kwargs):
        self._owner = owner
        super().__init__(*args, **kwargs)

    def __call__(self, request, callbacks=None):
        self._owner.refresh()
        return super().__call__(request, callbacks)

    def info(self):
        self._owner.refresh()
        return super().info()

    def is_valid(self) -> bool:
        # MONAI Label lists (and serves) only valid tasks and asks before info(): a family whose first checkpoint
        # was just trained must be re-read here to appear without a restart.
        self._owner.refresh()
        return bool(self.checkpoints)
