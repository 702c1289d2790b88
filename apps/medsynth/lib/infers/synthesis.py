"""MONAI Label infer task for contrast synthesis: a thin layer over ``medsynth_app.pipeline.synthesize``.

A request names one datastore image (``?image=sub01_T1``) and params ``{"target": "FLAIR"}``; optional
``{"inputs": {"T2": "<image id>"}}`` replaces or adds contrasts, and ``{"contrast": "T1"}`` names the contrast of an
image whose file name does not say it. The study of the image is the set of datastore images whose names carry the
same prefix (``sub01_T1``, ``sub01_T2``, ``sub01_FLAIR``: flat datastore, ``medsynth_app.studies.group_studies``);
on a PACS (``--studies http://HOST/dicom-web``) it is the image's DICOM study, its contrasts read from the PACS's
metadata (lib/dicomweb.py), and only the series used are downloaded.
A session upload of several files (``PUT /session/``, then ``?session_id=``) makes ``image`` a folder: its images,
named by contrast (``T1.nii.gz``, ``T2.nii.gz``), are the study, and the first input used gives the output grid.

The result is always a float32 volume on the grid of ``image``, marked synthetic in its header; the client's
``result_dtype`` is ignored (a Slicer client asks for uint8, which would destroy a synthetic intensity image) and its
``result_extension`` is honoured only when it is one that ``write_image`` supports (.nrrd, .nii.gz, .nii).

Errors meant for the user are raised as :class:`SynthesisRequestError` (a FastAPI ``HTTPException``): MONAI Label
registers no exception handler of its own, so any other exception leaves the server as a bare
"500 Internal Server Error" with no message, while an ``HTTPException`` reaches the client as
``{"detail": "<message>"}`` with its status code.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from fastapi import HTTPException
from lib.error_bodies import without_server_paths
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from medsynth_app.checkpoint import Checkpoint, CheckpointError
from medsynth_app.contrast_recognition import check_inputs
from medsynth_app.contrasts import BRAIN_MASK, CONTRASTS, canonical_contrast
from medsynth_app.imageio import (WRITE_EXTENSIONS, ImageError, is_dicom_folder, is_image_path, read_image,
                                  sort_dicom_files, unpack_zip, write_image, zip_folder)
from medsynth_app.models.base import SynthesisModel
from medsynth_app.pipeline import provenance_for, synthesize
from medsynth_app.studies import find_studies, group_studies, name_contrast
from medsynth_app.uncertainty import calibration_for
from medsynth_app.weights import UnknownCheckpointError, choose

logger = logging.getLogger(__name__)

TASK_TYPE = "synthesis"


class SynthesisRequestError(HTTPException):
    """A request that cannot be served as asked; MONAI Label's FastAPI app answers it with ``status_code`` and
    ``{"detail": message}``, absolute server paths in it replaced by file names."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(status_code=status_code, detail=without_server_paths(message))

    def __str__(self) -> str:
        return str(self.detail)


class SynthesisInferTask(BasicInferTask):
    """Synthesise one target contrast of the study of the requested image with one family's checkpoints."""

    def __init__(self, family: str, checkpoints: Sequence[Tuple[Path, Checkpoint]], description: str = "",
                 datastore=None):
        self.family = family
        self.checkpoints = [(Path(p), c) for p, c in checkpoints]
        self.targets = list(dict.fromkeys(t for _, c in self.checkpoints for t in c.targets))
        self.datastore = datastore  # set by the app once its datastore exists (MyApp.init_infers)
        # (checkpoint file, the loaded Checkpoint object, device) -> built model: built once, rebuilt when the file
        # changed (the store then holds a new Checkpoint object)
        self._models: Dict[Tuple[str, int, str], SynthesisModel] = {}
        super().__init__(
            path=[str(p) for p, _ in self.checkpoints],
            network=None,
            type=TASK_TYPE,
            labels=[],  # labels are segmentation classes to MONAI Label clients; a synthesis has none
            dimension=3,
            description=description or f"MedSynth {family}: synthesise {', '.join(self.targets) or 'nothing yet'}",
            # A list value is shown by the Slicer module as a drop-down; the first item is the default.
            config={"target": list(self.targets), "intensity": ["scaled", "normalised"], "uncertainty": False},
        )

    # ---- /info --------------------------------------------------------------------------------------------------
    def info(self) -> Dict[str, Any]:
        info = super().info()
        variants = {}
        for path, ckpt in self.checkpoints:
            required, optional = ckpt.input_roles()
            for target in ckpt.targets:
                variants.setdefault(target, []).append({
                    "checkpoint": path.name,
                    "inputs": list(ckpt.inputs),
                    "required_inputs": required,
                    "optional_inputs": optional,
                    "validation": (ckpt.training.get("validation") or {}).get(target, {}),
                    "validation_subjects": len(ckpt.training.get("validation_subjects", [])),
                    "training_subjects": len(ckpt.training.get("subjects", [])),
                    "training_datasets": sorted({str(s).split("/")[0] for s in ckpt.training.get("subjects", [])}),
                    "hparams": ckpt.hparams,
                    "library_version": ckpt.library_version,
                    "created": ckpt.created,
                })
        info.update(
            family=self.family,
            targets=self.targets,
            checkpoints=variants,
            output="float32 on the grid of the requested image, 0 outside the brain, header marked SYNTHETIC",
            params={"target": (f"one of {', '.join(self.targets)} (default {self.targets[0]})" if self.targets
                               else f"none yet: no trained {self.family} checkpoint (POST /train/{self.family})"),
                    "inputs": 'optional {"<contrast>": "<image id>"} overriding the study\'s own images',
                    "contrast": "optional contrast of `image` when its name does not say it",
                    "checkpoint": "optional file name of one of `checkpoints` (default: the one using the most "
                                  "inputs of the study, then the one trained for the fewest other inputs)",
                    "intensity": "scaled (training data's typical target scale, default) or normalised",
                    "uncertainty": "true: also answer the uncertainty map (expected absolute error per voxel) as the "
                                   "multipart field `uncertainty`, for checkpoints calibrated for it"},
        )
        return info

    # BasicInferTask declares these abstract; the whole request is handled in __call__.
    def pre_transforms(self, data=None):
        return []

    def post_transforms(self, data=None):
        return []

    # ---- request handling ---------------------------------------------------------------------------------------
    def __call__(self, request, callbacks=None):
        begin = time.time()
        if not self.checkpoints:
            raise SynthesisRequestError(f"no trained {self.family} checkpoint yet; train one with "
                                        f"POST /train/{self.family}", 404)
        req = dict(self._config)
        req.update(request)
        target = self._target(req.get("target"))
        intensity = req.get("intensity", "scaled")
        intensity = intensity[0] if isinstance(intensity, (list, tuple)) else intensity
        if intensity not in ("scaled", "normalised"):
            raise SynthesisRequestError(f"intensity must be 'scaled' or 'normalised', not {intensity!r}")

        image_path = req.get("image")
        # a session (PUT /session/) of several files (a folder) or of one zip: the upload is the study
        session = isinstance(image_path, str) and bool(image_path) and (
            os.path.isdir(image_path) or (os.path.isfile(image_path) and image_path.lower().endswith(".zip")))
        series: Dict[str, str] = {}  # contrast -> SeriesInstanceUID not downloaded yet (a PACS datastore)
        if self._on_pacs(req.get("datastore_image")):
            settled = {target, *self._explicit_inputs(req.get("inputs"))}
            study_id, contrast, series = self._pacs_study(req["datastore_image"], req.get("contrast"), settled)
            files = {c: Path(uid) for c, uid in series.items()}
        elif session:
            study_id, contrast, files = self._session_files(Path(image_path))
        elif not isinstance(image_path, str) or not image_path or not os.path.isfile(image_path):
            raise SynthesisRequestError(f"image {request.get('image')!r} is not an image file of the datastore "
                                        "(unknown image id?)", 404)
        else:
            study_id, contrast, files = self._study_files(Path(image_path), req.get("contrast"))
        for name, image_id in self._explicit_inputs(req.get("inputs")).items():
            files[name] = self._resolve_id(image_id)

        device = name_to_device(req.get("device"))
        loaded = time.time()
        path, ckpt, used = self._choose(target, files, study_id, req.get("checkpoint"), device)
        model = self._model(path, ckpt, device)
        load_seconds = round(time.time() - loaded, 3)
        for c in used:  # only the series the synthesis uses are downloaded
            if c in series and files[c] == Path(series[c]):
                files[c] = self.datastore.series_folder(series[c], study_id)
        if session:  # the first input (in T1 T1C T2 PD FLAIR DWI order) gives the output grid
            contrast = next(c for c in CONTRASTS if c in used)
            image_path = str(files[contrast])
        order = ([contrast] if contrast in used else []) + [c for c in used if c != contrast]
        with_uncertainty = str(req.get("uncertainty", False)).lower() in ("true", "1", "yes")
        try:
            images = {c: read_image(files[c]) for c in order}
            reference = read_image(image_path) if contrast not in used else images[contrast]
            brain = read_image(files[BRAIN_MASK], mask=True) if BRAIN_MASK in files else None
            calibration = calibration_for(path, target) if with_uncertainty else None
            checks = check_inputs(images)
            result = synthesize(ckpt, images, target, brain_mask=brain, intensity=intensity, model=model,
                                uncertainty=calibration)
        except ValueError as err:  # ImageError, CheckpointError, ValueError: the message names the file/contrast
            raise SynthesisRequestError(str(err), 422) from None
        result, uncertainty_map = result if calibration else (result, None)

        extension = str(req.get("result_extension") or ".nii.gz").lower()
        extension = extension if extension in (*WRITE_EXTENSIONS, ".zip") else ".nii.gz"
        provenance = provenance_for(ckpt, order, target)
        dicom_study = None
        if extension == ".zip":  # a DICOM series, in the study of the DICOM image giving the grid when there is one
            candidates = [Path(image_path), files.get(contrast)]
            if self._on_pacs(req.get("datastore_image")):  # the requested series, downloaded by MONAI Label
                candidates.append(self.datastore.series_folder(req["datastore_image"]))
            dicom_study = next((p for p in candidates if p and is_dicom_folder(p)), None)
        out = _write_result(result, reference, provenance, extension, study_id, dicom_study)
        extra = {}
        if uncertainty_map is not None:
            extra["extra_images"] = {"uncertainty": str(_write_result(
                uncertainty_map, reference, dataclasses.replace(provenance, map="UNCERTAINTY"), extension, study_id,
                dicom_study))}
            extra["uncertainty"] = {"field": "uncertainty", "units": "expected absolute error, intensity units of "
                                    "the synthetic image", "calibrated_on": calibration.fitted_on}
        seconds = round(time.time() - begin, 2)
        logger.info("synthesised %s of %s from %s with %s in %.1f s -> %s", target, study_id, "+".join(order),
                    path.name, seconds, out)
        return str(out), {
            "type": TASK_TYPE,
            "target": target,
            "study": study_id,
            "inputs": {c: os.path.basename(str(files[c])) for c in order},
            "model": self.family,
            "checkpoint": path.name,
            "intensity": intensity,
            "dtype": "float32",
            "synthetic": True,
            "device": device,
            "input_check": {c: check.to_dict() for c, check in checks.items()},
            "warnings": [w for w in (check.warning() for check in checks.values()) if w],
            "latencies": {"total": seconds, "model": load_seconds},
            **extra,
        }

    def _target(self, value) -> str:
        if isinstance(value, (list, tuple)):  # the config default (the whole drop-down list) was not overridden
            value = value[0] if value else None
        if not value:
            raise SynthesisRequestError(f"params must name a target: one of {', '.join(self.targets)}")
        try:
            target = canonical_contrast(str(value))
        except ValueError:
            target = str(value)
        if target not in self.targets:
            raise SynthesisRequestError(f"unknown target {value!r} for model {self.family}; "
                                        f"it synthesises {', '.join(self.targets)}")
        return target

    @staticmethod
    def _explicit_inputs(value) -> Dict[str, str]:
        if not value:
            return {}
        if not isinstance(value, dict):
            raise SynthesisRequestError('inputs must be an object {"<contrast>": "<image id>"}')
        out = {}
        for name, image_id in value.items():
            try:
                out[canonical_contrast(str(name))] = str(image_id)
            except ValueError as err:
                raise SynthesisRequestError(f"inputs: {err}") from None
        return out

    def _resolve_id(self, image_id: str) -> Path:
        """Datastore image id -> file (on a PACS: the series' folder). Only ids are accepted, never server paths."""
        if self._on_pacs(image_id):
            try:
                return self.datastore.series_folder(image_id)
            except (KeyError, IndexError):
                raise SynthesisRequestError(f"inputs: no series {image_id!r} in the PACS", 404) from None
        uri = self.datastore.get_image_uri(image_id) if self.datastore is not None else ""
        if uri and os.path.isfile(uri):
            return Path(uri)
        raise SynthesisRequestError(f"inputs: no image {image_id!r} in the datastore", 404)

    def _on_pacs(self, image_id) -> bool:
        return (hasattr(self.datastore, "study_contrasts") and isinstance(image_id, str) and bool(image_id)
                and not os.path.exists(image_id))

    def _pacs_study(self, series_uid: str, contrast_param,
                    settled: set) -> Tuple[str, Optional[str], Dict[str, str]]:
        """(StudyInstanceUID, contrast of the requested series, contrast -> SeriesInstanceUID) from the PACS's
        metadata; no series is downloaded. Two series of one input contrast are refused unless the request settles
        which (the requested series; ``settled``: the target and the explicit inputs)."""
        study_uid = self.datastore.study_of(series_uid)
        series, clashes = self.datastore.study_contrasts(study_uid)
        for c, uids in clashes.items():
            if c in settled:
                continue
            if series_uid in uids:
                series[c] = series_uid
            else:
                described = ", ".join(self.datastore.describe_series(u) for u in uids)
                raise SynthesisRequestError(f"study {study_uid}: {c} is claimed by {len(uids)} series: {described}; "
                                            f'pass the one to use as params inputs {{"{c}": "<series uid>"}}', 409)
        contrast = next((c for c, uid in series.items() if uid == series_uid), None)
        if contrast_param:
            try:
                contrast = canonical_contrast(str(contrast_param))
            except ValueError as err:
                raise SynthesisRequestError(f"contrast: {err}") from None
            series[contrast] = series_uid
        return study_uid, contrast, series

    @staticmethod
    def _session_files(upload: Path) -> Tuple[str, Optional[str], Dict[str, Path]]:
        """The study of a session upload (several files, or one zip): its images named by contrast (T1.nii.gz,
        T2.nii.gz, ...) and its DICOM series, whose contrasts come from their metadata."""
        try:
            folder = upload
            if upload.is_file():
                folder = upload.with_name(upload.name + ".unpacked")
                if not folder.is_dir():
                    unpack_zip(upload, folder)
            sort_dicom_files(folder)  # the files of several series sent together: one folder per series
            studies = find_studies(folder)
        except ImageError as err:  # a damaged zip, an unreadable DICOM file
            raise SynthesisRequestError(str(err), 422) from None
        except ValueError as err:  # StudyError: two files claim one contrast, unreadable manifest
            raise SynthesisRequestError(str(err), 409) from None
        if len(studies) != 1:
            names = ", ".join(sorted(p.name for p in folder.iterdir()))
            raise SynthesisRequestError(f"a session upload must hold one study's images named by contrast "
                                        f"(T1.nii.gz, T2.nii.gz, ...); found {len(studies)} studies in: {names}")
        study = studies[0]
        files: Dict[str, Path] = dict(study.images)
        if study.brain_mask is not None:
            files[BRAIN_MASK] = study.brain_mask
        return "session", None, files

    def _study_files(self, image_path: Path, contrast_param) -> Tuple[str, Optional[str], Dict[str, Path]]:
        """The study of a datastore image: the images of its folder (the flat datastore) grouped by name
        (``group_studies``, as training does); only the folder is listed, no datastore image is resolved."""
        parsed = name_contrast(image_path.name, image_path)
        contrast = parsed.contrast if parsed is not None and parsed.contrast in CONTRASTS else None
        if contrast_param:
            try:
                contrast = canonical_contrast(str(contrast_param))
            except ValueError as err:
                raise SynthesisRequestError(f"contrast: {err}") from None
        files: Dict[str, Path] = {}
        study_id = ""
        if parsed is not None and parsed.contrast in CONTRASTS:
            folder = image_path.parent
            entries = [(p.name, p) for p in sorted(folder.iterdir()) if is_image_path(p) and not p.name.startswith(".")]
            studies, refused = group_studies(entries, default_id=parsed.prefix)
            if parsed.prefix in refused:
                raise SynthesisRequestError(refused[parsed.prefix].replace(f"{folder}{os.sep}", ""), 409)
            study = next((s for s in studies if s.id == parsed.prefix), None)
            if study is not None:
                study_id = study.id
                files = dict(study.images)
                if study.brain_mask is not None:
                    files[BRAIN_MASK] = study.brain_mask
        if contrast is not None:
            files[contrast] = image_path
        return study_id, contrast, files

    def _choose(self, target: str, files: Dict[str, Path], study_id: str, checkpoint: Any = None,
                device: str = "cpu"):
        """(path, checkpoint, inputs used): the library's rule (``medsynth_app.weights.choose``) over this family's
        served checkpoints, asking the kept models which inputs they use."""
        try:
            return choose(self.checkpoints, target, list(files), checkpoint,
                          model_for=lambda p, c: self._model(p, c, device))
        except UnknownCheckpointError as err:
            raise SynthesisRequestError(f"model {self.family}: {err}", 404) from None
        except CheckpointError as err:
            raise SynthesisRequestError(
                f"cannot synthesise {target} for study {study_id or '?'}: {err}; pass the missing contrasts as "
                'params inputs {"<contrast>": "<image id>"}') from None

    def _model(self, path: Path, ckpt: Checkpoint, device: str) -> SynthesisModel:
        """The model of ``ckpt`` on ``device``, built on first use and kept while the checkpoint is served."""
        key = (str(path), id(ckpt), device)
        model = self._models.get(key)
        if model is None:
            served = {(str(p), id(c)) for p, c in self.checkpoints}
            self._models = {k: m for k, m in self._models.items() if k[:2] in served}
            model = ckpt.build()
            model.device = device
            self._models[key] = model
            logger.info("built %s for %s", path.name, device)
        return model


def _write_result(image: sitk.Image, reference: sitk.Image, provenance, extension: str, study_id: str,
                  dicom_study: Optional[Path]) -> Path:
    """The image on the grid of ``reference``, written to a new temporary file: NIfTI/NRRD, or for ".zip" a zipped
    DICOM series in the study of ``dicom_study`` when there is one."""
    if not _same_grid(image, reference):
        image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    what = provenance.target + (f"_{provenance.map.lower()}" if provenance.map else "")
    out = Path(tempfile.gettempdir()) / f"medsynth_{study_id or 'image'}_{what}_{uuid.uuid4().hex[:8]}{extension}"
    if extension == ".zip":
        with tempfile.TemporaryDirectory(prefix="medsynth_dicom_") as tmp:
            zip_folder(write_image(image, f"{tmp}/synthetic_{what}/", provenance, dicom_study), out)
    else:
        write_image(image, out, provenance)
    return out


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))
