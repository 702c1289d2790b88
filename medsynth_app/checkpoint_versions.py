"""A versioned folder of trained checkpoints, apart from the shipped ones, with one served version per task.

    <root>/versions/<task>/v0001.pt, v0002.pt, ...   every checkpoint saved, never overwritten
    <root>/versions/<task>/served.json               the versions served so far, the current one last
    <root>/served/<task>.pt                          symbolic link to the served version (absent: nothing served
                                                     from here, the shipped checkpoint of that name serves)

``<task>`` is the checkpoint's file name without ``.pt`` (``linear_T1+T2_to_FLAIR``). The ``served`` folder is a
plain folder of checkpoints for :class:`medsynth_app.weights.CheckpointStore`; the link is swapped atomically, so a
server re-reading it never sees a half-written file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import atomic_write
from .checkpoint import Checkpoint, save_checkpoint


class CheckpointVersions:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.served_dir = self.root / "served"

    def _task_dir(self, name: str) -> Path:
        return self.root / "versions" / Path(name).stem

    def versions(self, name: str) -> list[Path]:
        """Every saved version of the task of checkpoint file ``name``, oldest first."""
        return sorted(self._task_dir(name).glob("v*.pt"))

    def history(self, name: str) -> list[str]:
        """File names of the versions served so far, the current one last."""
        try:
            return list(json.loads((self._task_dir(name) / "served.json").read_text()))
        except (OSError, ValueError):
            return []

    def served(self, name: str) -> Path | None:
        """The version served for ``name``, or None (the shipped checkpoint of that name serves)."""
        link = self.served_dir / name
        return Path(os.path.realpath(link)) if link.is_symlink() else None

    def add(self, checkpoint: Checkpoint, name: str) -> Path:
        """Save ``checkpoint`` as the next version of ``name``'s task (not served yet)."""
        folder = self._task_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        existing = self.versions(name)
        number = int(existing[-1].stem[1:]) + 1 if existing else 1
        return save_checkpoint(checkpoint, folder / f"v{number:04d}.pt")

    def serve(self, name: str, version: Path) -> None:
        """Serve ``version`` (one of :meth:`versions`) as ``name``."""
        version = Path(version)
        if version.parent.resolve() != self._task_dir(name).resolve() or not version.is_file():
            raise ValueError(f"{version} is not a saved version of {name}")
        self._point(name, version)
        self._write_history(name, [*self.history(name), version.name])

    def restore_previous(self, name: str) -> Path | None:
        """Serve the version served before the current one; with none, stop serving from here (the shipped
        checkpoint serves again). Returns what is now served from here."""
        history = self.history(name)
        if not history:
            raise ValueError(f"nothing was served for {name} from {self.root}")
        history = history[:-1]
        previous = self._task_dir(name) / history[-1] if history else None
        self._point(name, previous)
        self._write_history(name, history)
        return previous

    def _point(self, name: str, version: Path | None) -> None:
        self.served_dir.mkdir(parents=True, exist_ok=True)
        link = self.served_dir / name
        if version is None:
            link.unlink(missing_ok=True)
            return
        temporary = self.served_dir / f".{name}.{os.getpid()}.tmp"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(os.path.relpath(version, self.served_dir))
        os.replace(temporary, link)

    def _write_history(self, name: str, history: list[str]) -> None:
        atomic_write(self._task_dir(name) / "served.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(history, indent=2)), suffix=".json")
