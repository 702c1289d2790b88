"""Writing a synthetic volume as a DICOM series (MR Image Storage, one file per slice), with pydicom.

The series joins the patient and study of a reference DICOM series when one is given; without one it gets a new
study of a placeholder patient (PatientName ``SYNTHETIC^MEDSYNTH``, PatientID ``MEDSYNTH``). Every file is marked
synthetic: ImageType ``DERIVED\\SECONDARY\\SYNTHETIC``, SeriesDescription ``SYNTHETIC <target> by <model> from
<inputs>``, a DerivationDescription naming model, inputs and library version, and new series and instance UIDs.

Voxels are stored as uint16 with RescaleIntercept = minimum and RescaleSlope = range / 65535, so values read back
within range / 131070 (a background of 0 stays exactly 0 when 0 is the minimum). The series is written into a
hidden sibling folder and renamed into place, so no partial series is ever visible; an existing folder is replaced
only when it is empty or holds a synthetic series.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from .imageio import SYNTHETIC_TAG, ImageError, Provenance, is_dicom_folder

PLACEHOLDER_PATIENT = {"PatientName": "SYNTHETIC^MEDSYNTH", "PatientID": "MEDSYNTH"}
COPIED_FROM_REFERENCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                         "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                         "StudyDescription", "FrameOfReferenceUID")
SERIES_NUMBER_OFFSET = 1000  # the synthetic series of reference series 5 is 1005, listed after its sources


def write_dicom_series(image: sitk.Image, folder: Path, provenance: Provenance,
                       reference: Path | sitk.Image | None = None) -> Path:
    """Write a 3-D volume into ``folder`` as a synthetic MR series; ``reference`` is a DICOM series folder, or an
    image carrying DICOM metadata (``gggg|eeee`` keys), whose patient and study the series joins."""
    folder = Path(folder)
    _refuse_to_replace(folder)
    study = _patient_and_study(reference)
    series_number = study.pop("SeriesNumber") + (SERIES_NUMBER_OFFSET if provenance.map else 0)  # its map: 2005
    return write_mr_series(image, folder, study, {**synthetic_marks(provenance), "SeriesNumber": series_number})


def synthetic_marks(provenance: Provenance) -> dict:
    """The series attributes that mark a series as MedSynth's synthetic output."""
    return {
        "SeriesDescription": provenance.description[:64],
        "Manufacturer": "MedSynth",
        "SoftwareVersions": provenance.library_version,
        "ImageType": ["DERIVED", "SECONDARY", SYNTHETIC_TAG, *([provenance.map] if provenance.map else [])],
        "DerivationDescription": (f"{provenance.description}; model {provenance.model}; inputs "
                                  f"{', '.join(provenance.inputs)}; medsynth {provenance.library_version}"),
        # MR Image module: "RM" (research mode) is the honest scanning sequence of a synthetic image.
        "ScanningSequence": "RM", "SequenceVariant": "NONE",
        "ScanOptions": "", "MRAcquisitionType": "", "EchoTime": "", "EchoTrainLength": "",
    }


def new_study(patient_name: str, patient_id: str) -> dict:
    """Patient and study attributes of a new study (new StudyInstanceUID and FrameOfReferenceUID)."""
    now = datetime.now()
    return {"PatientName": patient_name, "PatientID": patient_id, "PatientBirthDate": "", "PatientSex": "",
            "StudyInstanceUID": generate_uid(), "StudyDate": now.strftime("%Y%m%d"),
            "StudyTime": now.strftime("%H%M%S"), "StudyID": "", "AccessionNumber": "", "ReferringPhysicianName": "",
            "StudyDescription": "", "FrameOfReferenceUID": generate_uid()}


def write_mr_series(image: sitk.Image, folder: Path, study: dict, series: dict) -> Path:
    """Write a 3-D volume into ``folder`` (empty or absent) as an MR series of ``study`` (patient and study
    attributes by keyword) with the series attributes ``series`` (SeriesDescription, ImageType, sequence tags...)."""
    folder = Path(folder)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"{folder}: a DICOM series needs a scalar 3-D volume")
    image = sitk.Cast(image, sitk.sitkFloat64)
    if np.linalg.det(np.reshape(image.GetDirection(), (3, 3))) < 0:
        # DICOM readers stack slices along row x column; reversing the slices of a left-handed volume keeps every
        # voxel at its physical position, gives the direction it will be read back with and makes InstanceNumber
        # increase along that direction, for viewers that sort by it.
        image = sitk.Flip(image, [False, False, True])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_slices(image, tmp, {**study, **series})
        os.chmod(tmp, 0o755)
        _move_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _write_slices(image: sitk.Image, folder: Path, attributes: dict) -> None:
    values = sitk.GetArrayFromImage(image)  # [k, j, i]: one slice of rows x columns per k
    low, high = float(values.min()), float(values.max())
    intercept = float(format_number_as_ds(low))
    slope = float(format_number_as_ds((high - low) / 65535 if high > low else 1.0))
    stored = np.clip(np.rint((values - intercept) / slope), 0, 65535).astype(np.uint16)
    direction = np.reshape(image.GetDirection(), (3, 3))
    normal = np.cross(direction[:, 0], direction[:, 1])
    series_uid, now = generate_uid(), datetime.now()
    for k in range(image.GetDepth()):
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds = _dataset(folder / f"{k + 1:05d}.dcm", attributes, series_uid, now)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(x) for x in position]
        ds.ImageOrientationPatient = [_ds(x) for x in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [_ds(image.GetSpacing()[1]), _ds(image.GetSpacing()[0])]  # between rows, then columns
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(image.GetSpacing()[2])
        ds.SliceLocation = _ds(np.dot(position, normal))
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
        ds.WindowCenter, ds.WindowWidth = _ds((low + high) / 2), _ds(high - low if high > low else 1.0)
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<u2").tobytes()
        ds.save_as(ds.filename, write_like_original=False)
        with open(ds.filename, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(ds.filename, 0o644)


def _dataset(path: Path, attributes: dict, series_uid: str, now: datetime) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: whatever names the reference holds can be written
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PositionReferenceIndicator = ""
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.BurnedInAnnotation = "NO"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _ds(value: float) -> str:
    """A decimal string that fits DICOM's 16 characters with as many digits as they allow."""
    return format_number_as_ds(float(value))


def _patient_and_study(reference: Path | sitk.Image | None) -> dict:
    if reference is None:
        return {**new_study(PLACEHOLDER_PATIENT["PatientName"], PLACEHOLDER_PATIENT["PatientID"]),
                "SeriesNumber": SERIES_NUMBER_OFFSET}
    values, name = _reference_values(reference)
    if not values.get("StudyInstanceUID"):
        raise ImageError(f"{name}: has no DICOM StudyInstanceUID; cannot place the synthetic series in its study")
    study = {keyword: values.get(keyword, "") for keyword in COPIED_FROM_REFERENCE}
    study["FrameOfReferenceUID"] = study["FrameOfReferenceUID"] or generate_uid()
    try:
        study["SeriesNumber"] = int(str(values.get("SeriesNumber", 0)).strip() or 0) + SERIES_NUMBER_OFFSET
    except ValueError:
        study["SeriesNumber"] = SERIES_NUMBER_OFFSET
    return study


def _reference_values(reference: Path | sitk.Image) -> tuple[dict, str]:
    """The reference's copied attributes and SeriesNumber by keyword, and a name for error messages."""
    keywords = (*COPIED_FROM_REFERENCE, "SeriesNumber")
    if isinstance(reference, sitk.Image):
        values = {}
        for keyword in keywords:
            tag = tag_for_keyword(keyword)
            key = f"{tag >> 16:04x}|{tag & 0xFFFF:04x}"
            if reference.HasMetaDataKey(key):
                values[keyword] = reference.GetMetaData(key).strip().rstrip("\0")
        return values, "reference image"
    reference = Path(reference)
    if not is_dicom_folder(reference):
        raise ImageError(f"{reference}: is not a DICOM series folder; cannot use it as the DICOM reference")
    first = sorted(p for p in reference.iterdir() if p.is_file() and not p.name.startswith("."))[0]
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as err:
        raise ImageError(f"{first}: not a readable DICOM file ({err})") from None
    return {keyword: ds.get(keyword) for keyword in keywords if ds.get(keyword) is not None}, str(reference)


def _refuse_to_replace(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ImageError(f"{folder}: exists and is not a folder; refusing to replace it with a DICOM series")
    if folder.is_dir() and not all(_is_synthetic_slice(p) for p in folder.iterdir()):
        raise ImageError(f"{folder}: holds files that are not a synthetic DICOM series (an acquired series?); "
                         "refusing to write into it")


def _is_synthetic_slice(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError):
        return False
    return (SYNTHETIC_TAG in list(ds.get("ImageType", []))
            and str(ds.get("SeriesDescription", "")).upper().startswith(SYNTHETIC_TAG))


def _move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the written series to ``folder``; a previous synthetic series there is swapped out, then removed."""
    if not folder.exists() or not any(folder.iterdir()):
        os.replace(tmp, folder)  # rename(2) replaces an empty folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
    os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old)
