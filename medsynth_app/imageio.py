"""Reading and writing volumes: NIfTI, NRRD, MHA/MHD and DICOM series folders, through SimpleITK.

Every reader error names the file and the problem. Writers are atomic (temporary file, fsync, rename), mark the
image as synthetic in its header and refuse to replace a file that is not itself a synthetic image. An output path
ending with "/" is written as a DICOM series folder (``dicom_output``).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .atomic import atomic_write
from .contrasts import has_image_extension
from .dicom_series import KEYWORDS

SYNTHETIC_TAG = "SYNTHETIC"
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
MAX_VOXELS_VARIABLE = "MEDSYNTH_MAX_VOXELS"
# 64 M voxels (e.g. 400^3): synthesis peaks near 200 bytes per voxel (1.8 GB for 240x240x155), so about 13 GB.
DEFAULT_MAX_VOXELS = 64 * 1024 * 1024


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Provenance:
    """What a synthetic image was made from; written into every output header."""

    model: str
    inputs: tuple[str, ...]
    target: str
    library_version: str
    map: str = ""  # "" for the synthetic image itself; "UNCERTAINTY" for its expected-absolute-error map

    @property
    def description(self) -> str:
        what = f"{self.target} {self.map}" if self.map else self.target
        return f"{SYNTHETIC_TAG} {what} by {self.model} from {'+'.join(self.inputs)}"


def _is_dicom_file(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: Path) -> bool:
    """A folder whose files are DICOM (checked on the first few, by the DICM preamble)."""
    if not path.is_dir():
        return False
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))[:3]
    return bool(files) and all(_is_dicom_file(p) for p in files)


def dicom_series_attributes(path: Path) -> dict:
    """The attributes ``dicom_series`` reads (SeriesDescription, ImageType, sequence tags), by keyword, from the first
    file of a DICOM series folder."""
    import pydicom

    first = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))[0]
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=list(KEYWORDS))
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as err:
        raise ImageError(f"{first}: not a readable DICOM file ({err})") from None
    return {k: ds.get(k) for k in KEYWORDS if ds.get(k) is not None}


def sort_dicom_files(folder: Path) -> list[Path]:
    """Move the DICOM files lying directly in ``folder`` (an upload of several series' files) into one sub-folder
    per series, named ``series_<SeriesNumber>_<n>``; returns the series folders made."""
    import pydicom

    files = [p for p in sorted(folder.iterdir()) if p.is_file() and _is_dicom_file(p)]
    made = []
    for n, series_id in enumerate(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) if files else [], 1):
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
        number = pydicom.dcmread(names[0], stop_before_pixels=True).get("SeriesNumber", "")
        target = folder / f"series_{number}_{n}"
        target.mkdir()
        for name in names:
            os.replace(name, target / Path(name).name)
        made.append(target)
    return made


MAX_UNPACKED_BYTES = 4 * 2**30


def unpack_zip(path: Path, into: Path) -> Path:
    """Extract a zip of DICOM series (files at any depth, several series' files possibly mixed in one folder) or of
    image files into ``into``, with loose DICOM files sorted into one folder per series; returns ``into``. Raises
    ImageError naming the zip when it is damaged or too large once unpacked."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise ImageError(f"{path}: unpacks to more than {MAX_UNPACKED_BYTES / 2**30:g} GB")
            archive.extractall(into)  # zipfile drops absolute paths and "..": nothing lands outside ``into``
    except (zipfile.BadZipFile, OSError) as err:
        raise ImageError(f"{path}: not a readable zip file ({err})") from None
    sort_dicom_files(into)
    for folder in sorted(p for p in into.rglob("*") if p.is_dir()):
        if len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))) > 1:  # a folder of one series stays as is
            sort_dicom_files(folder)
    return into


def unpack_dicom_zip(path: Path, into: Path) -> Path:
    """Extract a zip of one DICOM series into ``into``; returns the series folder (ImageError naming the zip when it
    holds no series or several)."""
    series = sorted(p for p in unpack_zip(path, into).rglob("*") if is_dicom_folder(p))
    if len(series) != 1:
        raise ImageError(f"{path}: holds {len(series)} DICOM series; give a zip of one series")
    return series[0]


def zip_folder(folder: Path, path: Path) -> Path:
    """Write the files of ``folder`` into the zip ``path`` (under the folder's name)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"{folder.name}/{file.name}")
    return path


def is_image_path(path: Path) -> bool:
    return (path.is_file() and has_image_extension(path.name)) or is_dicom_folder(path)


@contextlib.contextmanager
def opened_image(path: str | Path) -> Iterator[Path]:
    """``path`` itself, or for a zip of a DICOM series the series unpacked into a temporary folder (removed on
    exit)."""
    path = Path(path)
    if not (path.is_file() and path.name.lower().endswith(".zip")):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="medsynth_zip_") as tmp:
        yield unpack_dicom_zip(path, Path(tmp))


def _reader_for(path: Path) -> sitk.ImageFileReader | sitk.ImageSeriesReader:
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise ImageError(f"{path}: folder holds no DICOM series")
        if len(series) > 1:
            raise ImageError(f"{path}: folder holds {len(series)} DICOM series; give one series per folder")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
        reader.MetaDataDictionaryArrayUpdateOn()
        return reader
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    return reader


def read_header(path: str | Path) -> dict:
    """Geometry of an image without loading its voxels: size, spacing, origin, direction, orientation code."""
    path = Path(path)
    reader = _reader_for(path)
    try:
        if isinstance(reader, sitk.ImageSeriesReader):
            image = reader.Execute()
            size, spacing, origin, direction = image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
        else:
            reader.ReadImageInformation()
            size, spacing = reader.GetSize(), reader.GetSpacing()
            origin, direction = reader.GetOrigin(), reader.GetDirection()
    except RuntimeError as err:
        raise ImageError(f"{path}: not a readable image ({_first_line(err)})") from None
    dim = len(size)
    orientation = (
        sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction) if dim == 3 else "n/a"
    )
    return {"size": tuple(size), "spacing": tuple(spacing), "origin": tuple(origin), "direction": tuple(direction),
            "orientation": orientation}


def max_voxels() -> int:
    """The configured largest volume, in voxels (environment variable MEDSYNTH_MAX_VOXELS)."""
    value = os.environ.get(MAX_VOXELS_VARIABLE, "")
    try:
        return int(value) if value else DEFAULT_MAX_VOXELS
    except ValueError:
        raise ValueError(f"{MAX_VOXELS_VARIABLE}={value!r} is not a whole number of voxels") from None


def _check_size(path: Path, reader: sitk.ImageFileReader | sitk.ImageSeriesReader) -> None:
    """Refuse a volume above the memory limit before its voxels are loaded."""
    if isinstance(reader, sitk.ImageSeriesReader):
        first = sitk.ImageFileReader()
        first.SetFileName(reader.GetFileNames()[0])
        first.ReadImageInformation()
        size = (*first.GetSize()[:2], len(reader.GetFileNames()))
    else:
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise ImageError(f"{path}: not a readable image ({_first_line(err)})") from None
        size = reader.GetSize()
    voxels = int(np.prod(size, dtype=np.int64))
    limit = max_voxels()
    if voxels > limit:
        raise ImageError(f"{path}: {'x'.join(map(str, size))} = {voxels / 1e6:.1f} M voxels exceeds the limit of "
                         f"{limit / 1e6:.1f} M voxels ({MAX_VOXELS_VARIABLE})")


def read_image(path: str | Path, *, mask: bool = False) -> sitk.Image:
    """Read a 3-D scalar volume as float32; raises ImageError naming the file for anything unusable.

    An intensity image (``mask=False``) must hold more than one value; a mask may be all zero (no lesion).
    """
    path = Path(path)
    reader = _reader_for(path)
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    _check_size(path, reader)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ImageError(f"{path}: not a readable image ({_first_line(err)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a scalar volume is needed")
    if image.GetDimension() == 4:
        if image.GetSize()[3] != 1:
            raise ImageError(f"{path}: is a 4-D series of {image.GetSize()[3]} volumes; give one 3-D volume")
        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise ImageError(f"{path}: is {image.GetDimension()}-D; a 3-D volume is needed")
    image = sitk.Cast(image, sitk.sitkFloat32)
    voxels = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(voxels).all():
        raise ImageError(f"{path}: contains {int((~np.isfinite(voxels)).sum())} NaN or infinite voxels")
    if not mask and voxels.min() == voxels.max():
        raise ImageError(f"{path}: every voxel is {float(voxels.min()) + 0.0:g}; the volume holds no image")
    return image


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if "ERROR" not in line.upper()[:20] and not line.startswith("sitk::")]
    return (useful or lines or ["unknown error"])[-1][:200]


def is_synthetic_file(path: Path) -> bool:
    """True when the header of ``path`` carries the synthetic marking written by :func:`write_image`."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    for key in ("descrip", "medsynth_synthetic", "SeriesDescription"):
        if reader.HasMetaDataKey(key) and reader.GetMetaData(key).strip().upper().startswith(SYNTHETIC_TAG):
            return True
        if key == "medsynth_synthetic" and reader.HasMetaDataKey(key):
            return True
    return False


def write_image(image: sitk.Image, path: str | Path, provenance: Provenance,
                dicom_reference: Path | sitk.Image | None = None) -> Path:
    """Atomically write a synthetic float32 volume as NIfTI or NRRD, marked synthetic in its header; a ``path``
    ending with "/" is written as a DICOM series in the patient and study of ``dicom_reference`` (if given)."""
    if str(path).endswith(("/", os.sep)):
        from .dicom_output import write_dicom_series  # imports this module

        return write_dicom_series(image, Path(path), provenance, dicom_reference)
    path = Path(path)
    if not path.name.lower().endswith(WRITE_EXTENSIONS):
        raise ImageError(f"{path}: output must end with one of {', '.join(WRITE_EXTENSIONS)}, "
                         "or with / for a DICOM series folder")
    if path.exists() and not is_synthetic_file(path):
        raise ImageError(f"{path}: exists and is not a synthetic image; refusing to overwrite it")
    image = sitk.Cast(image, sitk.sitkFloat32)
    for key in image.GetMetaDataKeys():
        image.EraseMetaData(key)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        image.SetMetaData("medsynth_synthetic", "true")
        image.SetMetaData("medsynth_description", provenance.description)
        image.SetMetaData("medsynth_model", provenance.model)
        image.SetMetaData("medsynth_inputs", ",".join(provenance.inputs))
        image.SetMetaData("medsynth_target", provenance.target)
        image.SetMetaData("medsynth_version", provenance.library_version)
        if provenance.map:
            image.SetMetaData("medsynth_map", provenance.map.lower())
            image.SetMetaData("medsynth_units", "expected absolute error, intensity units of the synthetic image")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
        return atomic_write(path, lambda tmp: _write_nifti(image, tmp, provenance), suffix)
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, tmp, useCompression=True), path.suffix)


def voxel_to_ras(image: sitk.Image) -> np.ndarray:
    """4x4 affine from (i, j, k) voxel indices (SimpleITK index order) to RAS millimetres, as nibabel writes it."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _write_nifti(image: sitk.Image, path: str, provenance: Provenance) -> None:
    # nibabel, because SimpleITK cannot set the header's descrip and intent_name fields.
    data = np.ascontiguousarray(sitk.GetArrayViewFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    nifti = nib.Nifti1Image(data, voxel_to_ras(image))
    nifti.header["descrip"] = provenance.description[:79].encode()
    nifti.header["intent_name"] = (provenance.map or SYNTHETIC_TAG).encode()
    nifti.header.set_xyzt_units("mm")
    nifti.set_qform(nifti.affine, code=1)
    nifti.set_sform(nifti.affine, code=1)
    nib.save(nifti, path)


def _check_nifti(path: Path) -> None:
    """Damaged gzip streams and NaN voxels, which SimpleITK's NIfTI reader passes silently (it reads NaN as 0)."""
    try:
        voxels = np.asanyarray(nib.load(path).dataobj)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as err:
        reason = "damaged gzip file" if path.name.lower().endswith(".gz") else "not a readable image"
        raise ImageError(f"{path}: {reason} ({str(err).splitlines()[0][:160]})") from None
    if np.issubdtype(voxels.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(voxels)))
        if bad:
            raise ImageError(f"{path}: contains {bad} NaN or infinite voxels")
