"""Shared TaskConfig of a MedSynth model family: serves every installed checkpoint of the family as one infer task,
and trains new ones with one train task.

A family config only names its family; ``lib/configs/<family>.py`` subclasses :class:`SynthesisTaskConfig`.

Checkpoints are searched in this order, a file name seen twice being taken from the first folder: the folders of
``MEDSYNTH_WEIGHTS``, then the app's own ``model`` folder (where the app's trainers write), then the library's
shipped ``apps/medsynth/model`` (the same folder when the app runs from the repository).

The served set is re-read whenever a checkpoint file appears, disappears or changes (modification time, size or
inode; ``save_checkpoint`` renames a new file over the old one): a trainer running in MONAI Label's training
subprocess writes its checkpoint, and the next infer request or ``/info`` of the server serves it, without restart.
A file that was served and is then replaced by one that does not load (damaged, truncated) is logged as an error and
the weights loaded from it before keep being served.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from medsynth_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from medsynth_app.weights import SHIPPED_DIR

from lib.infers.synthesis import SynthesisInferTask
from lib.trainers.synthesis import SynthesisTrainTask

logger = logging.getLogger(__name__)


def checkpoint_folders(model_dir: Optional[str]) -> List[Path]:
    """MEDSYNTH_WEIGHTS folders, the app's model folder, the shipped folder; each once."""
    folders = [Path(p) for p in os.environ.get("MEDSYNTH_WEIGHTS", "").split(os.pathsep) if p]
    if model_dir:
        folders.append(Path(model_dir))
    folders.append(SHIPPED_DIR)
    unique, seen = [], set()
    for folder in folders:
        key = os.path.realpath(folder)
        if key not in seen:
            seen.add(key)
            unique.append(folder)
    return unique


def _signature(path: Path) -> Optional[Tuple[int, int, int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class SynthesisTaskConfig(TaskConfig):
    family: str = ""
    description: str = ""

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self._lock = threading.RLock()
        self._cache: Dict[str, Tuple[Tuple[int, int, int], Optional[Checkpoint]]] = {}  # path -> (signature, ckpt)
        self._tasks: List[SynthesisInferTask] = []
        self.checkpoints: List[Tuple[Path, Checkpoint]] = []
        self.refresh()
        logger.info("+++ %s: %d checkpoint(s): %s", self.family, len(self.checkpoints),
                    ", ".join(p.name for p, _ in self.checkpoints))

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Re-read the checkpoint folders; load only files that are new or changed. Returns True when the served
        set changed, and then updates the infer tasks built by :meth:`infer`."""
        with self._lock:
            found: List[Tuple[Path, Checkpoint]] = []
            names = set()
            cache = {}
            for folder in checkpoint_folders(self.model_dir):
                for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
                    signature = _signature(path)
                    if signature is None:
                        continue
                    key = str(path)
                    cached = self._cache.get(key)
                    if cached is not None and cached[0] == signature:
                        ckpt = cached[1]
                    else:
                        try:
                            ckpt = load_checkpoint(path)
                        except CheckpointError as err:
                            # A damaged file over a checkpoint already served: keep serving what was loaded.
                            ckpt = cached[1] if cached is not None else None
                            logger.error("%s%s", err, "; keeping the weights loaded before" if ckpt else "; skipped")
                    cache[key] = (signature, ckpt)
                    if ckpt is not None and ckpt.family == self.family and path.name not in names:
                        names.add(path.name)
                        found.append((path, ckpt))
            old = [(str(p), id(c)) for p, c in self.checkpoints]
            self._cache = cache
            self.checkpoints = found
            self.path = [str(p) for p, _ in found]
            changed = old != [(str(p), id(c)) for p, c in found]
            if changed and self._tasks:
                logger.info("+++ %s: serving %s", self.family, ", ".join(f"{p} ({c.created})" for p, c in found))
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
