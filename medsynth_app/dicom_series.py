"""Which contrast an MR series holds, read from its DICOM attributes rather than from a file name.

The SeriesDescription is matched with the file-name rules of ``contrasts`` ("t2_flair_tra_dark-fluid" is a FLAIR,
"t1_mprage_sag" a T1); when it names no contrast, the sequence decides: an inversion recovery (ScanningSequence
``IR``) with a long inversion time nulls fluid (FLAIR), one with a short inversion time is T1-weighted (MPRAGE); without
inversion, short TR and TE give T1, long TR with long TE give T2 and long TR with short TE give PD. A T1 acquired with
a contrast agent (ContrastBolusAgent) is a T1C. Derived series (ImageType DERIVED, MedSynth's SYNTHETIC output) are
never an acquired contrast.

Attributes are given by DICOM keyword, as pydicom values or as the value lists of DICOM JSON (QIDO-RS, WADO-RS
metadata).
"""
from __future__ import annotations

from typing import Any, Mapping

from .contrasts import CONTRASTS, parse_name

# The attributes the rules read; a DICOMweb query asks for exactly these.
KEYWORDS = ("SeriesDescription", "ImageType", "ScanningSequence", "SequenceVariant", "EchoTime", "RepetitionTime",
            "InversionTime", "ContrastBolusAgent", "Modality")
FLAIR_MIN_TI_MS = 1500.0  # fluid nulling: TI about 2000-2800 ms at 1.5-3 T
T1_IR_TI_MS = (300.0, 1500.0)  # MPRAGE / T1-FLAIR: TI about 700-1200 ms; below 300 ms is STIR (fat nulling)
SHORT_TR_MS, LONG_TR_MS = 1000.0, 2000.0
SHORT_TE_MS, LONG_TE_MS = 30.0, 60.0


def _words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v).strip().upper() for v in value]
    return [w.strip().upper() for w in str(value).split("\\") if w.strip()]


def _number(value: Any) -> float | None:
    words = _words(value)
    try:
        return float(words[0]) if words else None
    except ValueError:
        return None


def is_derived(attributes: Mapping[str, Any]) -> bool:
    """A series made from others (ImageType DERIVED or SYNTHETIC): never an acquired contrast."""
    image_type = _words(attributes.get("ImageType"))
    return "DERIVED" in image_type[:1] or "SYNTHETIC" in image_type


def sequence_contrast(attributes: Mapping[str, Any]) -> str | None:
    """The weighting of an MR series from ScanningSequence, EchoTime, RepetitionTime and InversionTime (ms)."""
    sequence = _words(attributes.get("ScanningSequence"))
    te, tr, ti = (_number(attributes.get(k)) for k in ("EchoTime", "RepetitionTime", "InversionTime"))
    if "IR" in sequence and ti is not None:
        if ti >= FLAIR_MIN_TI_MS:
            return "FLAIR"
        return "T1" if T1_IR_TI_MS[0] <= ti < T1_IR_TI_MS[1] else None
    if te is None or tr is None or "EP" in sequence:
        return None
    if tr < SHORT_TR_MS and te < SHORT_TE_MS:
        return "T1"
    if tr >= LONG_TR_MS and te >= LONG_TE_MS:
        return "T2"
    if tr >= LONG_TR_MS and te < SHORT_TE_MS:
        return "PD"
    return None


def series_contrast(attributes: Mapping[str, Any]) -> str | None:
    """The acquired contrast of a series (one of CONTRASTS), or None for a derived series, a mask or an unknown one."""
    if is_derived(attributes) or _words(attributes.get("Modality")) not in ([], ["MR"]):
        return None
    description = " ".join(_words(attributes.get("SeriesDescription"))).lower()
    parsed = parse_name(description) if description else None
    contrast = parsed.contrast if parsed is not None else sequence_contrast(attributes)
    if contrast not in CONTRASTS:
        return None
    if contrast == "T1" and _words(attributes.get("ContrastBolusAgent")):
        return "T1C"
    return contrast
