"""The local datastore and the sessions of the app, with uploads checked on arrival.

A file sent to ``PUT /datastore/image`` must be a readable 3-D image, and what is sent to ``PUT /session/`` (image
files, DICOM series files, or one zip of them) must hold one readable study; anything else is refused with HTTP 422
naming the uploaded file and the problem, and nothing is stored. A studies folder laid out one folder per study (as
``medsynth demo-data`` writes it) is refused at start with a message saying how to lay it out: MONAI Label's local
datastore lists only the files of one folder.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.utils.sessions import Sessions

from medsynth_app.imageio import ImageError, read_image, sort_dicom_files, unpack_zip
from medsynth_app.studies import find_studies


def check_image(path: str, name: str) -> None:
    """A readable 3-D image, else HTTP 422 naming ``name`` (never the server's temporary path)."""
    try:
        read_image(path)
    except ImageError as err:
        raise HTTPException(422, str(err).replace(path, name)) from None


def check_study(path: str) -> None:
    """One study of readable images: an image file, a folder of image files or DICOM series files, or a zip of
    them; else HTTP 422 naming the uploaded file (by its name, never by the server's temporary path)."""
    upload = Path(path)
    if upload.is_file() and not upload.name.lower().endswith(".zip"):
        check_image(path, upload.name)
        return
    with tempfile.TemporaryDirectory(prefix="medsynth_upload_") as tmp:
        try:
            if upload.is_file():
                folder = unpack_zip(upload, Path(tmp) / upload.name)
            else:
                folder = upload
                sort_dicom_files(folder)  # the files of several series sent together: one folder per series
            studies = find_studies(folder)
            if len(studies) != 1:
                raise ImageError(f"{upload.name}: holds {len(studies)} studies of images named by contrast "
                                 "(T1.nii.gz, T2.nii.gz, ...) or DICOM series; send one study")
            for image in studies[0].images.values():
                read_image(image)
        except ValueError as err:  # ImageError, StudyError
            message = str(err).replace(f"{tmp}{os.sep}", "").replace(f"{upload}{os.sep}", "")
            raise HTTPException(422, message.replace(f"{upload.parent}{os.sep}", "")) from None


class CheckedDatastore(LocalDatastore):
    """MONAI Label's local datastore refusing an image that is not a readable 3-D volume."""

    def add_image(self, image_id, image_filename, image_info):
        check_image(image_filename, str(image_id))
        return super().add_image(image_id, image_filename, image_info)


class CheckedSessions(Sessions):
    """MONAI Label's sessions refusing an upload that is not one readable study."""

    def add_session(self, data_file, expiry=0, uncompress=False, session_id=None):
        check_study(data_file)
        return super().add_session(data_file, expiry, uncompress, session_id)


def local_datastore(studies: str) -> CheckedDatastore:
    """The datastore of ``--studies DIR`` (MONAI Label's settings), refusing a folder of one folder per study."""
    folder = Path(studies)
    if folder.is_dir() and not any(p.is_file() for p in folder.iterdir() if not p.name.startswith(".")):
        nested = find_studies(folder)
        if nested:
            example = nested[0]
            contrast, path = next(iter(example.images.items()))
            raise ValueError(
                f"{folder} holds one folder per study ({len(nested)} studies, e.g. {path.relative_to(folder)}); "
                f"MONAI Label serves one flat folder of <study>_<contrast> files: give --studies a folder holding "
                f"{example.id.replace('/', '_')}_{contrast}{''.join(path.suffixes)} and the like (links will do)")
    return CheckedDatastore(studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)


def sessions() -> CheckedSessions:
    return CheckedSessions(settings.MONAI_LABEL_SESSION_PATH, settings.MONAI_LABEL_SESSION_EXPIRY)
