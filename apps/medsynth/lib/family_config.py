"""Shared TaskConfig of a MedSynth model family: serves every installed checkpoint of the family as one infer task.

A family config only names its family; ``lib/configs/<family>.py`` subclasses :class:`SynthesisTaskConfig`.
Checkpoints come from ``medsynth_app.weights.installed()`` (folders in MEDSYNTH_WEIGHTS, then the shipped
``apps/medsynth/model``) plus the app's own ``model`` folder when the app runs from a copy elsewhere; a file name
seen twice is taken from the first folder.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from medsynth_app.checkpoint import CheckpointError, load_checkpoint
from medsynth_app.weights import installed

from lib.infers.synthesis import SynthesisInferTask

logger = logging.getLogger(__name__)


class SynthesisTaskConfig(TaskConfig):
    family: str = ""
    description: str = ""

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        found = list(installed())
        if model_dir and Path(model_dir).is_dir():
            for path in sorted(Path(model_dir).glob("*.pt")):
                try:
                    found.append((path, load_checkpoint(path)))
                except CheckpointError as err:
                    logger.warning("skipping %s", err)
        seen, self.checkpoints = set(), []
        for path, ckpt in found:
            if ckpt.family == self.family and path.name not in seen:
                seen.add(path.name)
                self.checkpoints.append((path, ckpt))
        self.path = [str(p) for p, _ in self.checkpoints]
        logger.info("+++ %s: %d checkpoint(s): %s", self.family, len(self.checkpoints),
                    ", ".join(p.name for p, _ in self.checkpoints))

    def infer(self) -> Dict[str, InferTask]:
        if not self.checkpoints:
            logger.warning("no installed %s checkpoint; the %s model is not served", self.family, self.name)
            return {}
        return {self.name: SynthesisInferTask(self.family, self.checkpoints, self.description)}

    def trainer(self) -> Optional[TrainTask]:
        return None  # first increment: inference only (train with `medsynth train`)
