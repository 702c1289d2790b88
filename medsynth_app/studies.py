"""Studies on disk: one subject's contrasts (and optional brain and lesion masks), found by name or by a manifest.

A folder holding recognised images is a study; a flat folder whose file names carry a study prefix
(``sub01_T1.nii.gz``, ``sub01_T2.nii.gz``, ``sub02_T1.nii.gz``) holds one study per prefix. A DICOM series folder is
one image, named by its folder. ``medsynth_manifest.csv`` (columns study, contrast, path) or ``medsynth_manifest.json``
({"study": {"T1": "path", ...}}) in the root overrides the names.
"""
from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .contrasts import BRAIN_MASK, CONTRASTS, LESION_MASK, canonical_contrast, has_image_extension, ParsedName, parse_name
from .imageio import dicom_series_description, is_dicom_folder, read_header

MANIFEST_NAMES = ("medsynth_manifest.json", "medsynth_manifest.csv")


class StudyError(ValueError):
    """A folder or manifest that does not define studies unambiguously; the message names the files."""


@dataclass
class Study:
    """One subject's images: canonical contrast name -> path, plus optional masks."""

    id: str
    images: dict[str, Path] = field(default_factory=dict)
    brain_mask: Path | None = None
    lesion_mask: Path | None = None

    @property
    def contrasts(self) -> list[str]:
        return [c for c in CONTRASTS if c in self.images]

    def has(self, contrasts: list[str] | tuple[str, ...]) -> bool:
        return all(c in self.images for c in contrasts)

    def describe(self) -> dict:
        """id, contrasts, and the geometry of the first contrast (read from headers only)."""
        first = self.images[self.contrasts[0]]
        header = read_header(first)
        return {
            "id": self.id,
            "contrasts": self.contrasts,
            "brain_mask": self.brain_mask is not None,
            "lesion_mask": self.lesion_mask is not None,
            "shape": list(header["size"]),
            "spacing": [round(s, 4) for s in header["spacing"]],
            "orientation": header["orientation"],
            "files": {c: str(p) for c, p in self.images.items()},
        }


def _add(study: Study, contrast: str, path: Path, claimed: dict[tuple[str, str], list[Path]]) -> None:
    claimed[(study.id, contrast)].append(path)
    if contrast == BRAIN_MASK:
        study.brain_mask = path
    elif contrast == LESION_MASK:
        study.lesion_mask = path
    else:
        study.images[contrast] = path


def _check_unambiguous(claimed: dict[tuple[str, str], list[Path]]) -> None:
    clashes = [(key, paths) for key, paths in claimed.items() if len(paths) > 1]
    if clashes:
        (study_id, contrast), paths = clashes[0]
        names = ", ".join(str(p) for p in sorted(paths))
        raise StudyError(f"study {study_id or '.'}: {len(paths)} files look like {contrast}: {names}; "
                         f"rename them or list them in a {MANIFEST_NAMES[1]}")


def _folder_studies(folder: Path, root: Path, entries: list[Path]) -> list[Study]:
    groups: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for entry in entries:
        parsed = parse_name(entry.name)
        if parsed is None and entry.is_dir():
            described = parse_name(dicom_series_description(entry))
            parsed = described and ParsedName("", described.contrast)
        if parsed is not None:
            groups[parsed.prefix].append((parsed.contrast, entry))
    imaging = sorted(prefix for prefix, items in groups.items() if any(c in CONTRASTS for c, _ in items))
    if not imaging:
        return []
    relative = folder.relative_to(root).as_posix()
    claimed: dict[tuple[str, str], list[Path]] = defaultdict(list)
    if len(imaging) == 1:
        # One study per folder; masks named without the study prefix ("brainmask.nii.gz") belong to it.
        study = Study(relative if relative != "." else (imaging[0] or folder.name))
        for items in groups.values():
            for contrast, path in items:
                _add(study, contrast, path, claimed)
        studies = [study]
    else:
        studies = []
        for prefix in imaging:
            study = Study(prefix if relative == "." else f"{relative}/{prefix}")
            for contrast, path in groups[prefix]:
                _add(study, contrast, path, claimed)
            studies.append(study)
    _check_unambiguous(claimed)
    return studies


def _from_manifest(manifest: Path) -> list[Study]:
    base = manifest.parent
    rows: list[tuple[str, str, str]] = []
    try:
        if manifest.suffix == ".json":
            data = json.loads(manifest.read_text())
            rows = [(sid, contrast, path) for sid, files in data.items() for contrast, path in files.items()]
        else:
            with manifest.open(newline="") as handle:
                reader = csv.DictReader(handle)
                missing = {"study", "contrast", "path"} - set(reader.fieldnames or [])
                if missing:
                    raise StudyError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}")
                rows = [(r["study"], r["contrast"], r["path"]) for r in reader]
    except (json.JSONDecodeError, AttributeError) as err:
        raise StudyError(f"{manifest}: not a study manifest ({err})") from None
    studies: dict[str, Study] = {}
    claimed: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for study_id, contrast, rel in rows:
        name = contrast.strip().upper().replace(" ", "_")
        if name not in (BRAIN_MASK, LESION_MASK):
            try:
                name = canonical_contrast(contrast)
            except ValueError as err:
                raise StudyError(f"{manifest}: study {study_id}: {err}") from None
        path = (base / rel).resolve()
        if not path.exists():
            raise StudyError(f"{manifest}: study {study_id}: {path} does not exist")
        _add(studies.setdefault(study_id, Study(study_id)), name, path, claimed)
    _check_unambiguous(claimed)
    return list(studies.values())


def find_studies(root: str | Path) -> list[Study]:
    """Every study under ``root`` (recursively), sorted by id; a manifest in ``root`` replaces the name rules."""
    root = Path(root)
    if not root.is_dir():
        raise StudyError(f"{root}: not a folder")
    for name in MANIFEST_NAMES:
        if (root / name).exists():
            return sorted(_from_manifest(root / name), key=lambda s: s.id)
    studies: list[Study] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        folder_path = Path(folder)
        dirs.sort()
        dicom_dirs = [folder_path / d for d in dirs if is_dicom_folder(folder_path / d)]
        dirs[:] = [d for d in dirs if folder_path / d not in dicom_dirs and not d.startswith(".")]
        entries = [folder_path / f for f in sorted(files) if has_image_extension(f) and not f.startswith(".")]
        entries += dicom_dirs
        studies.extend(_folder_studies(folder_path, root, entries))
    return sorted(studies, key=lambda s: s.id)


def get_study(root: str | Path, study_id: str) -> Study:
    for study in find_studies(root):
        if study.id == study_id:
            return study
    raise StudyError(f"{root}: no study {study_id!r}")
