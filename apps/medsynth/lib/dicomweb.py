"""A PACS as the app's datastore, over DICOMweb: MONAI Label's ``DICOMWebDatastore`` (image id = SeriesInstanceUID,
series downloaded with WADO-RS into its cache on first use) with what contrast synthesis needs on top:

* the contrast of every series is read from one QIDO-RS query (SeriesDescription, ImageType, ScanningSequence,
  SequenceVariant, EchoTime, RepetitionTime, InversionTime, ContrastBolusAgent; ``medsynth_app.dicom_series``),
  never by downloading the series; a study is a StudyInstanceUID;
* only the series a synthesis or a training uses are downloaded (as DICOM, read directly);
* a synthetic volume is written as a DICOM series in the study of the image it was made for (DERIVED\\SECONDARY\\
  SYNTHETIC, ``medsynth_app.dicom_output``) and stored into the PACS with STOW-RS; acquired series are never
  written.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pydicom
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.utils.dicom import dicom_web_download_series
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from medsynth_app.dicom_output import write_dicom_series
from medsynth_app.dicom_series import KEYWORDS, series_contrast
from medsynth_app.imageio import Provenance, read_image, unpack_dicom_zip
from medsynth_app.studies import Study

logger = logging.getLogger(__name__)

DEFAULT_SEARCH_FILTER = {"Modality": "MR"}
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
QUERY_FIELDS = (*KEYWORDS, "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber")


def _attributes(json_dataset: Dict[str, Any]) -> Dict[str, Any]:
    """DICOM JSON (tag -> {"vr", "Value"}) as keyword -> value (a single value, or a list for multi-valued ones)."""
    out = {}
    for tag, element in json_dataset.items():
        keyword = keyword_for_tag(int(tag, 16))
        values = element.get("Value")
        if keyword and values:
            out[keyword] = values[0] if len(values) == 1 else list(values)
    return out


def _contrasts(series: List[Dict[str, Any]]) -> Tuple[Dict[str, str], Dict[str, List[str]]]:
    claimed: Dict[str, List[str]] = {}
    for attributes in sorted(series, key=lambda a: int(a.get("SeriesNumber") or 0)):
        contrast = series_contrast(attributes)
        if contrast is not None:
            claimed.setdefault(contrast, []).append(str(attributes["SeriesInstanceUID"]))
    return ({c: uids[0] for c, uids in claimed.items() if len(uids) == 1},
            {c: uids for c, uids in claimed.items() if len(uids) > 1})


class SynthesisDICOMwebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore, with studies and contrasts read from the PACS's metadata."""

    def __init__(self, client, search_filter: Optional[Dict[str, Any]] = None, cache_path: Optional[str] = None,
                 fetch_by_frame: bool = False):
        super().__init__(client, search_filter or DEFAULT_SEARCH_FILTER, cache_path, fetch_by_frame,
                         convert_to_nifti=True)

    # ---- metadata (QIDO-RS) -----------------------------------------------------------------------------------
    def series_attributes(self, study_uid: Optional[str] = None) -> List[Dict[str, Any]]:
        """Keyword -> value of every series of the datastore (or of one study): one QIDO-RS query."""
        fields = [f"{tag_for_keyword(k):08X}" for k in QUERY_FIELDS]
        found = self._client.search_for_series(study_instance_uid=study_uid, fields=fields,
                                               search_filters=dict(self._search_filter), get_remaining=True)
        return [_attributes(ds) for ds in found]

    def study_of(self, series_uid: str) -> str:
        found = self._client.search_for_series(search_filters={"SeriesInstanceUID": series_uid},
                                               fields=["0020000D"])
        if not found:
            raise KeyError(f"no series {series_uid} in the PACS")
        return str(_attributes(found[0])["StudyInstanceUID"])

    def study_contrasts(self, study_uid: str) -> Tuple[Dict[str, str], Dict[str, List[str]]]:
        """(contrast -> SeriesInstanceUID of the study's acquired series, contrast -> series claiming it twice or
        more). Derived and synthetic series, and series of no recognised contrast, are left out."""
        return _contrasts(self.series_attributes(study_uid))

    def describe_series(self, series_uid: str) -> str:
        """'<SeriesDescription> (series <n>)' for messages."""
        found = self._client.search_for_series(search_filters={"SeriesInstanceUID": series_uid},
                                               fields=["0008103E", "00200011"])
        attributes = _attributes(found[0]) if found else {}
        return f"{attributes.get('SeriesDescription', series_uid)} (series {attributes.get('SeriesNumber', '?')})"

    def json(self) -> Dict[str, Any]:
        """GET /datastore/?output=all: every series of the PACS (MONAI Label's lists only the downloaded ones), with
        its study, description, number and the contrast read from its metadata."""
        data = super().json()
        for attributes in self.series_attributes():
            entry = data["objects"].setdefault(str(attributes["SeriesInstanceUID"]),
                                               {"image": {"ext": "", "info": {}}, "labels": {}})
            entry["image"]["info"].update(
                {k: str(attributes.get(k, "")) for k in ("StudyInstanceUID", "SeriesDescription", "SeriesNumber")},
                contrast=series_contrast(attributes) or "")
        return data

    # ---- pixel data (WADO-RS) ---------------------------------------------------------------------------------
    def get_image_uri(self, image_id: str) -> str:
        """MONAI Label's (the series downloaded and converted to NIfTI), for SeriesInstanceUIDs only (it joins the id
        to its cache folder, so ``../`` would reach any folder of the server); "" for a series the PACS lacks."""
        if not UID.fullmatch(str(image_id)):
            return ""
        try:
            return super().get_image_uri(image_id)
        except IndexError:  # MONAI Label's download found no such series
            return ""

    def series_folder(self, series_uid: str, study_uid: Optional[str] = None) -> Path:
        """The series as a folder of DICOM files in the cache, downloaded on first use (KeyError for what is not a
        UID, IndexError for a series the PACS does not hold)."""
        if not UID.fullmatch(series_uid):
            raise KeyError(f"{series_uid!r} is not a DICOM UID")
        folder = Path(self._datastore.image_path()) / series_uid
        if folder.is_dir() and any(folder.iterdir()):
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{series_uid}.", dir=folder.parent))
        try:
            dicom_web_download_series(study_uid, series_uid, str(tmp), self._client, self._fetch_by_frame)
            if folder.is_dir():
                folder.rmdir()
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    # ---- studies for training ---------------------------------------------------------------------------------
    def studies(self) -> Tuple[List[Study], Dict[str, str]]:
        """Every study of the PACS with its acquired contrasts (not downloaded: ``fetch`` does that), and the
        studies left out with the reason."""
        by_study: Dict[str, List[Dict[str, Any]]] = {}
        for attributes in self.series_attributes():
            by_study.setdefault(str(attributes.get("StudyInstanceUID")), []).append(attributes)
        studies, skipped = [], {}
        for study_uid in sorted(by_study):
            contrasts, clashes = _contrasts(by_study[study_uid])
            if clashes:
                contrast, uids = next(iter(clashes.items()))
                skipped[study_uid] = f"{contrast} is claimed by {len(uids)} series: " + \
                    ", ".join(self.describe_series(u) for u in uids)
                continue
            if contrasts:
                study = Study(study_uid)
                study.images = {c: Path(self._datastore.image_path()) / uid for c, uid in contrasts.items()}
                studies.append(study)
        return studies, skipped

    def fetch(self, study: Study) -> None:
        """Download the series of a study returned by ``studies``."""
        for path in study.images.values():
            self.series_folder(path.name, study.id)

    # ---- results (STOW-RS) ------------------------------------------------------------------------------------
    def store_synthetic(self, image_id: str, result_file: str, provenance: Provenance) -> str:
        """Write ``result_file`` (on the grid of series ``image_id``) as a synthetic series of that series' study
        and store it in the PACS; returns the new SeriesInstanceUID."""
        reference = self.series_folder(image_id)
        with tempfile.TemporaryDirectory(prefix="medsynth_stow_") as tmp:
            if result_file.lower().endswith(".zip"):  # the answer asked as a DICOM series (result_extension .zip)
                result_file = str(unpack_dicom_zip(Path(result_file), Path(tmp) / "answer"))
            folder = write_dicom_series(read_image(result_file), Path(tmp) / "series", provenance, reference)
            datasets: List[Dataset] = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
            self._client.store_instances(datasets)
        series_uid = str(datasets[0].SeriesInstanceUID)
        logger.info("stored synthetic series %s (%d instances) in study %s", series_uid, len(datasets),
                    datasets[0].StudyInstanceUID)
        return series_uid


def datastore_for(url: str) -> SynthesisDICOMwebDatastore:
    """The datastore of ``monailabel start_server --studies http(s)://.../dicom-web``, configured by MONAI Label's
    own settings (MONAI_LABEL_DICOMWEB_USERNAME/PASSWORD, the QIDO/WADO/STOW prefixes, cache path, fetch by frame,
    search filter). MONAI Label's default search filter (Modality CT) becomes Modality MR."""
    from dicomweb_client.session_utils import create_session_from_user_pass
    from monailabel.config import settings
    from monailabel.datastore.dicom import DICOMwebClientX

    session = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    client = DICOMwebClientX(url=url, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                             wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                             stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
    search_filter = dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER)
    if search_filter == {"Modality": "CT"}:
        search_filter = dict(DEFAULT_SEARCH_FILTER)
    cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
    return SynthesisDICOMwebDatastore(client, search_filter, cache_path, settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME)
