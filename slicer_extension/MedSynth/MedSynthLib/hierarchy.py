"""Where a volume belongs in the subject hierarchy (patient, study), and putting a result beside its inputs.

Slicer's DICOM import puts every series under a patient item (UID "DICOM" = PatientID, attribute DICOM.PatientID)
and a study item (UID "DICOM" = StudyInstanceUID). A volume outside any patient (a NIfTI file from disk) is known
only by a subject identifier heading its name (``sub01_T1``, ``sub-01_T1w``, ``patient07_FLAIR``,
``BraTS20_Training_001_t1``), when it has one; series names such as ``AX T2 FSE`` say nothing of the subject.
Imports ``slicer`` lazily, like ``mrml_io``: works in 3D Slicer and with PyPI's ``slicer-core``.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

from .logic import Origin
from .contrasts import parse_name

DICOM_UID = "DICOM"
PATIENT_ID_ATTRIBUTE = "DICOM.PatientID"
STUDY_UID_ATTRIBUTE = "DICOM.StudyInstanceUID"
SUBJECT_PREFIX = re.compile(r"(?:sub|subj|subject|patient|pat|case|s)[-_]?\d+[A-Za-z0-9]*|\w*_\d{3,}", re.I)


def _shn(scene):
    import slicer  # noqa: WPS433 - lazily: this package must import without Slicer

    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def item_of(node) -> int:
    """The node's subject hierarchy item (created at the scene level when the application has not made one)."""
    shn = _shn(node.GetScene())
    item = shn.GetItemByDataNode(node)
    return item or shn.CreateItem(shn.GetSceneItemID(), node)


def place_in_study(scene, patient_id: str, study_uid: str, nodes, study_name: str = "") -> int:
    """A patient and a study item carrying DICOM identifiers, holding ``nodes``, as Slicer's DICOM import makes them
    (for scripted scenes and the module's tests). Returns the study item."""
    shn = _shn(scene)
    patient = shn.CreateSubjectItem(shn.GetSceneItemID(), f"Patient {patient_id}")
    shn.SetItemUID(patient, DICOM_UID, patient_id)
    study = shn.CreateStudyItem(patient, study_name or f"MR brain {study_uid}")
    shn.SetItemUID(study, DICOM_UID, study_uid)
    for node in nodes:
        shn.SetItemParent(item_of(node), study)
    return study


def _key(shn, item: int, attribute: str) -> Tuple[Optional[str], str]:
    """(identity, label) of a patient or study item: its DICOM identifier when it has one, else the item itself."""
    if not item:
        return None, ""
    uid = shn.GetItemUID(item, DICOM_UID) or shn.GetItemAttribute(item, attribute)
    label = shn.GetItemName(item)
    return (f"DICOM {uid}" if uid else f"item {item}"), (f"{label} ({uid})" if uid and uid != label else label)


def origin_of(node) -> Origin:
    """The patient and study a volume node belongs to (None keys when nothing says)."""
    shn = _shn(node.GetScene())
    item = item_of(node)
    patient, patient_label = _key(shn, shn.GetItemAncestorAtLevel(item, "Patient"), PATIENT_ID_ATTRIBUTE)
    study, study_label = _key(shn, shn.GetItemAncestorAtLevel(item, "Study"), STUDY_UID_ATTRIBUTE)
    if patient is None:
        parsed = parse_name(node.GetName() or "")
        if parsed is not None and SUBJECT_PREFIX.fullmatch(parsed.prefix):
            patient, patient_label = f"name {parsed.prefix}", f"subject {parsed.prefix!r} (from the volume name)"
    return Origin(patient, study, patient_label, study_label)


def origins(nodes: Dict[str, object]) -> Dict[str, Origin]:
    return {contrast: origin_of(node) for contrast, node in nodes.items()}


def place_beside(node, reference) -> None:
    """Put ``node`` under the same subject hierarchy parent (study, or folder) as ``reference``."""
    shn = _shn(reference.GetScene())
    shn.SetItemParent(item_of(node), shn.GetItemParent(item_of(reference)))


def study_item(node) -> int:
    """The study item holding ``node`` (0 when none)."""
    return _shn(node.GetScene()).GetItemAncestorAtLevel(item_of(node), "Study")
