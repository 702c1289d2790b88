"""The checkpoint store: which checkpoint files are installed, and which one serves a synthesis.

Folders are searched in this order, a file name found twice being taken from the first folder: the folders of
``MEDSYNTH_WEIGHTS`` (``os.pathsep``-separated), the folders the caller names, then the folders that installed
packages declare in the entry-point group ``medsynth.weight_folders`` (each entry point loads to a callable returning
folders; the deployment package declares its shipped weights there). The library itself knows no folder.

:class:`CheckpointStore` keeps what it loaded and re-reads a file only when it changed (modification time, size,
inode: ``save_checkpoint`` renames a new file over the old one), so a long-running server sees new weights without
restart. :func:`choose` is the one rule that picks a checkpoint for a request.
"""
from __future__ import annotations

import logging
import os
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .contrasts import CONTRASTS

if TYPE_CHECKING:
    from .models.base import SynthesisModel

ENTRY_POINT_GROUP = "medsynth.weight_folders"
logger = logging.getLogger(__name__)


class UnknownCheckpointError(CheckpointError):
    """A checkpoint asked for by name that the store does not hold."""


def declared_folders() -> list[Path]:
    """The folders declared by installed packages in ``medsynth.weight_folders``."""
    folders = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            folders += [Path(f) for f in entry.load()()]
        except Exception as err:  # noqa: BLE001 - a broken plug-in must not stop the library
            logger.warning("ignoring weight folders of %s: %s", entry.value, err)
    return folders


def weight_folders(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """MEDSYNTH_WEIGHTS folders, then ``extra``, then the declared folders; each once."""
    env = [Path(p) for p in os.environ.get("MEDSYNTH_WEIGHTS", "").split(os.pathsep) if p]
    unique, seen = [], set()
    for folder in [*env, *map(Path, extra), *declared_folders()]:
        key = os.path.realpath(folder)
        if key not in seen:
            seen.add(key)
            unique.append(folder)
    return unique


def checkpoint_name(family: str, inputs: Sequence[str], targets: Sequence[str]) -> str:
    return f"{family}_{'+'.join(inputs)}_to_{'+'.join(targets)}.pt"


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class CheckpointStore:
    """The checkpoints of :func:`weight_folders` (``extra`` being this store's own folders), loaded once and
    re-read when their file changes. A file that was loaded and is then replaced by one that does not load
    (damaged, truncated) is logged as an error and the checkpoint loaded before is kept."""

    def __init__(self, extra: Iterable[str | os.PathLike] = ()):
        self.extra = [Path(f) for f in extra]
        self._lock = threading.RLock()
        self._cache: dict[str, tuple[tuple[int, int, int], Checkpoint | None]] = {}

    def checkpoints(self, family: str | None = None) -> list[tuple[Path, Checkpoint]]:
        """(path, checkpoint) of every readable checkpoint, of ``family`` when given; first file name wins."""
        with self._lock:
            found, names, cache = [], set(), {}
            for folder in weight_folders(self.extra):
                for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
                    signature = _signature(path)
                    if signature is None:
                        continue
                    cached = self._cache.get(str(path))
                    if cached is not None and cached[0] == signature:
                        ckpt = cached[1]
                    else:
                        try:
                            ckpt = load_checkpoint(path)
                        except CheckpointError as err:
                            ckpt = cached[1] if cached is not None else None
                            logger.error("%s%s", err, "; keeping the weights loaded before" if ckpt else "; skipped")
                    cache[str(path)] = (signature, ckpt)
                    if ckpt is not None and path.name not in names:
                        names.add(path.name)
                        found.append((path, ckpt))
            self._cache = cache
        return [(p, c) for p, c in found if family is None or c.family == family]


def installed(extra: Iterable[str | os.PathLike] = ()) -> list[tuple[Path, Checkpoint]]:
    """Every readable checkpoint of the weight folders (unreadable files are skipped, not fatal)."""
    return CheckpointStore(extra).checkpoints()


def choose(checkpoints: Sequence[tuple[Path, Checkpoint]], target: str, available: Sequence[str],
           name: str | None = None,
           model_for: Callable[[Path, Checkpoint], SynthesisModel] | None = None) -> tuple[Path, Checkpoint, list[str]]:
    """(path, checkpoint, inputs it uses) for synthesising ``target`` from the ``available`` contrasts: the one
    named ``name``, else the one using the most of them, and of those the one trained for the fewest inputs (a model
    trained for exactly these inputs before one trained to accept any subset). CheckpointError says why none fits;
    UnknownCheckpointError when ``name`` is not among ``checkpoints``. ``model_for(path, checkpoint)`` gives the
    model asked which inputs it uses (a server passes its kept models); by default an untrained one is made."""
    from .models import create

    model_for = model_for or (lambda _, c: create(c.family, c.inputs, c.targets, **c.hparams))
    candidates = list(checkpoints)
    if name:
        candidates = [(p, c) for p, c in candidates if p.name == str(name)]
        if not candidates:
            raise UnknownCheckpointError(f"unknown checkpoint {name!r}; there are "
                                         f"{', '.join(p.name for p, _ in checkpoints) or 'none'}")
    available = [c for c in CONTRASTS if c in available and c != target]
    best, reasons = None, []
    for path, ckpt in candidates:
        if target not in ckpt.targets:
            reasons.append(f"{path.name} does not synthesise {target}")
            continue
        try:
            used = model_for(path, ckpt).usable_inputs(available)
        except ValueError as err:
            reasons.append(str(err))
            continue
        if best is None or (len(used), -len(ckpt.inputs)) > (len(best[2]), -len(best[1].inputs)):
            best = (path, ckpt, used)
    if best is None:
        raise CheckpointError(f"no checkpoint synthesises {target} from {'+'.join(available) or 'no input'}: "
                              f"{'; '.join(reasons) or 'none installed'}")
    return best


def find(family: str, target: str, inputs: Sequence[str] | None = None,
         extra: Iterable[str | os.PathLike] = ()) -> tuple[Path, Checkpoint]:
    """The installed checkpoint of ``family`` that synthesises ``target`` from ``inputs`` (:func:`choose`; without
    inputs, the first checkpoint of ``target``)."""
    candidates = CheckpointStore(extra).checkpoints(family)
    if not inputs:
        candidates = [(p, c) for p, c in candidates if target in c.targets]
        if not candidates:
            raise CheckpointError(f"no installed {family} checkpoint for ->{target}; see `medsynth models`")
        return candidates[0]
    try:
        path, ckpt, _ = choose(candidates, target, inputs)
    except CheckpointError as err:
        raise CheckpointError(f"no installed {family} checkpoint for {'+'.join(inputs)}->{target} ({err}); "
                              "see `medsynth models`") from None
    return path, ckpt
