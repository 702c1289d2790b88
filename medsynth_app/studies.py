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
from typing import Iterable

from .contrasts import (BRAIN_MASK, CONTRASTS, LESION_MASK, ParsedName, canonical_contrast, has_image_extension,
                        is_series_prefix, parse_name)
from .dicom_series import is_derived, series_contrast
from .imageio import dicom_series_attributes, is_dicom_folder, read_header

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


def _clash(study_id: str, contrast: str, paths: list[Path]) -> str:
    names = ", ".join(str(p) for p in sorted(paths))
    return (f"study {study_id or '.'}: {len(paths)} files look like {contrast}: {names}; "
            f"rename them or list them in a {MANIFEST_NAMES[1]}")


def _check_unambiguous(claimed: dict[tuple[str, str], list[Path]]) -> None:
    clashes = [(key, paths) for key, paths in claimed.items() if len(paths) > 1]
    if clashes:
        (study_id, contrast), paths = clashes[0]
        raise StudyError(_clash(study_id, contrast, paths))


def name_contrast(name: str, path: Path) -> ParsedName | None:
    """(study prefix, contrast or mask) of an image from its name (``sub01_T1.nii.gz``, a datastore id ``sub01_T1``);
    a DICOM series folder whose name says nothing is recognised from its metadata (SeriesDescription, then the
    sequence tags) and a derived or synthetic DICOM series is never an acquired contrast."""
    dicom = path.is_dir()
    attributes = dicom_series_attributes(path) if dicom else {}
    if dicom and is_derived(attributes):
        return None
    parsed = parse_name(name)
    if parsed is None and dicom:
        contrast = series_contrast(attributes)
        parsed = ParsedName("", contrast) if contrast else None
    return parsed


def group_studies(files: Iterable[tuple[str, Path]], folder_id: str = "", default_id: str = "study",
                  ignored: dict[Path, str] | None = None) -> tuple[list[Study], dict[str, str]]:
    """The studies of one folder's images, given as (name, path), with the study ids refused and why.

    Names say the contrast and, before it, the study (``sub01_T1``, ``sub01_T2``: MONAI Label's flat datastore);
    when one study prefix (or none) is found, every image, masks named without the prefix included, belongs to one
    study: ``folder_id``, else the prefix, else ``default_id``. Prefixes that are scanner series words only
    (``101_SAG_T1``, ``201_AX_T2_FSE``; ``t1_mprage_sag_p2_iso_2``, ``t2_tse_tra_4``), each claiming other contrasts,
    are the series of one study. Two images claiming one contrast of a study refuse that study (the reason names
    both). Images whose name says no contrast are left out, and recorded with why in ``ignored``."""
    groups: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for name, path in files:
        parsed = name_contrast(name, path)
        if parsed is not None:
            groups[parsed.prefix].append((parsed.contrast, path))
        elif ignored is not None:
            ignored[path] = ("a derived or synthetic DICOM series" if path.is_dir() else "its name says no contrast")
    imaging = sorted(prefix for prefix, items in groups.items() if any(c in CONTRASTS for c, _ in items))
    if len(imaging) > 1 and _series_of_one_study(groups):
        groups = {"": [item for items in groups.values() for item in items]}
        imaging = [""]
    if len(imaging) == 1:
        ids = {prefix: folder_id or imaging[0] or default_id for prefix in groups}
    else:
        ids = {prefix: f"{folder_id}/{prefix}" if folder_id else prefix for prefix in imaging}
    studies: dict[str, Study] = {}
    claimed: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for prefix, study_id in ids.items():
        for contrast, path in groups[prefix]:
            _add(studies.setdefault(study_id, Study(study_id)), contrast, path, claimed)
    refused = {}
    for (study_id, contrast), paths in claimed.items():
        if len(paths) > 1 and study_id not in refused:
            refused[study_id] = _clash(study_id, contrast, paths)
    return [s for sid, s in sorted(studies.items()) if sid not in refused and s.images], refused


def _series_of_one_study(groups: dict[str, list[tuple[str, Path]]]) -> bool:
    claimed = [contrast for items in groups.values() for contrast, _ in items]
    return all(is_series_prefix(prefix) for prefix in groups) and len(claimed) == len(set(claimed))


def _folder_studies(folder: Path, root: Path, entries: list[Path], ignored: dict[Path, str]) -> list[Study]:
    relative = folder.relative_to(root).as_posix()
    silent: dict[Path, str] = {}
    studies, refused = group_studies(((p.name, p) for p in entries), "" if relative == "." else relative,
                                     default_id=folder.name, ignored=silent)
    if refused:
        raise StudyError(next(iter(refused.values())))
    if len(studies) <= 1:  # one patient's folder: the image recogniser names the series its name is silent on
        studies = _recognise_silent(studies, silent, relative if relative != "." else folder.name)
    ignored.update(silent)
    return studies


def _recognise_silent(studies: list[Study], silent: dict[Path, str], study_id: str) -> list[Study]:
    """Add the silent images the contrast recogniser is sure of (and whose contrast the study lacks) to the study;
    the others stay in ``silent`` with the recogniser's verdict."""
    from .contrast_recognition import SURE, recognise
    from .imageio import read_image

    study = studies[0] if studies else Study(study_id)
    for path, reason in list(silent.items()):
        if reason != "its name says no contrast":
            continue
        try:
            p = recognise(read_image(path))
        except ValueError as err:  # ImageError included
            silent[path] = f"its name says no contrast and it cannot be recognised ({err})"
            continue
        best = max(p, key=p.get)
        if p[best] >= SURE and best not in study.images:
            study.images[best] = path
            del silent[path]
        else:
            silent[path] = (f"its name says no contrast and the image recogniser is unsure (looks like {best}, "
                            f"p = {p[best]:.2f})" if p[best] < SURE else
                            f"its name says no contrast and it looks like {best} (p = {p[best]:.2f}), which the "
                            "study already has")
    return [study] if study.images else []


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


def find_studies(root: str | Path, ignored: dict[Path, str] | None = None) -> list[Study]:
    """Every study under ``root`` (recursively), sorted by id; a manifest in ``root`` replaces the name rules.
    Every file left out is recorded with why in ``ignored``."""
    ignored = {} if ignored is None else ignored
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
        ignored.update({folder_path / f: "hidden file" if f.startswith(".") else "not an image file"
                        for f in sorted(files) if folder_path / f not in entries and f not in MANIFEST_NAMES})
        entries += dicom_dirs
        studies.extend(_folder_studies(folder_path, root, entries, ignored))
    return sorted(studies, key=lambda s: s.id)


def get_study(root: str | Path, study_id: str) -> Study:
    for study in find_studies(root):
        if study.id == study_id:
            return study
    raise StudyError(f"{root}: no study {study_id!r}")
