"""A real PACS for tests: Orthanc with its DICOMweb plugin (installed by .ci/install_orthanc.sh), started on a free
port of 127.0.0.1 with its own configuration and storage folder, and MR studies made from real data as a scanner
would send them (SeriesDescription, ImageType ORIGINAL, ScanningSequence/SequenceVariant, TE/TR/TI)."""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pydicom
import requests
import SimpleITK as sitk

from medsynth_app.dicom_output import new_study, write_mr_series
from medsynth_server.launcher import free_port

ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALLED = bool(ORTHANC) and DICOMWEB_PLUGIN.exists()

# Siemens-like protocols: what the scanner writes for each contrast.
PROTOCOLS = {
    "T1": {"SeriesDescription": "t1_mprage_sag", "ScanningSequence": ["GR", "IR"], "SequenceVariant": ["SP", "MP"],
           "RepetitionTime": "2300", "EchoTime": "2.98", "InversionTime": "900", "MRAcquisitionType": "3D"},
    "T2": {"SeriesDescription": "t2_tse_tra", "ScanningSequence": ["SE"], "SequenceVariant": ["SK", "SP"],
           "RepetitionTime": "6000", "EchoTime": "95", "MRAcquisitionType": "2D"},
    "FLAIR": {"SeriesDescription": "t2_flair_tra_dark-fluid", "ScanningSequence": ["SE", "IR"],
              "SequenceVariant": ["SK", "SP", "MP"], "RepetitionTime": "9000", "EchoTime": "81",
              "InversionTime": "2500", "MRAcquisitionType": "2D"},
}


@contextlib.contextmanager
def running_orthanc(work: Path) -> Iterator[str]:
    """Start Orthanc (HTTP only, no DICOM port, local access only) storing under ``work``; yields the DICOMweb root
    URL (``http://127.0.0.1:PORT/dicom-web``); stops it on exit."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {"Name": "medsynth-test", "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{port}"}}
    (work / "orthanc.json").write_text(json.dumps(config, indent=1))
    with open(work / "orthanc.log", "wb") as log:
        proc = subprocess.Popen([ORTHANC, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                                cwd=work, start_new_session=True)
        try:
            deadline = time.time() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited: {(work / 'orthanc.log').read_text()[-2000:]}")
                try:
                    if requests.get(f"http://127.0.0.1:{port}/dicom-web/studies", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                if time.time() > deadline:
                    raise RuntimeError("Orthanc not up after 60 s")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/dicom-web"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_study(images: dict[str, sitk.Image], folder: Path, patient: str, protocols: dict | None = None) -> Path:
    """One MR study of ``patient``: a series folder per contrast, as acquired (ImageType ORIGINAL\\PRIMARY), with the
    protocol's description and sequence tags."""
    study = new_study(patient.upper() + "^TEST", patient)
    for number, (contrast, image) in enumerate(images.items(), start=2):
        series = {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "SeriesNumber": number,
                  "Manufacturer": "SIEMENS", "MagneticFieldStrength": "3", **(protocols or PROTOCOLS)[contrast]}
        write_mr_series(image, folder / f"series{number}", study, series)
    return folder


def upload(url: str, folder: Path) -> int:
    """STOW-RS every DICOM file under ``folder``; returns how many were stored."""
    from dicomweb_client import DICOMwebClient

    datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
    DICOMwebClient(url).store_instances(datasets)
    return len(datasets)
