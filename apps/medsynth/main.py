"""MedSynth MONAI Label app: serves the installed MedSynth checkpoints as "synthesis" infer tasks and retrains them
from the datastore with one "synthesis" train task per family.

    monailabel start_server --app apps/medsynth --studies <flat datastore> --host 127.0.0.1 [--conf models linear]
        [--conf user_models DIR]

``--conf max_upload_mb`` caps every request body (default 1024). ``--conf user_models`` is the versioned folder
trained checkpoints go to (lib/family_config.user_models_dir); the app's ``model`` folder is never written.
``--conf models`` is "all" (default) or a comma list of families; a family is a module of ``lib/configs`` holding a
TaskConfig subclass. Every selected family gets an infer task serving its installed checkpoints (``medsynth
models``; 404 while it has none, until its trainer writes one) and a trainer (``POST /train/<family>``). Mirrors the
layout of MONAI Label's radiology sample app (main.py, lib/configs, lib/infers, lib/trainers).
"""
from __future__ import annotations

import atexit
import importlib
import inspect
import logging
import os
import pkgutil
import shutil
import sys
import tempfile
from typing import Dict

# The library lives two folders up when the app runs from the repository; make it importable without PYTHONPATH.
_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
try:
    import medsynth_app  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the server was started
    sys.path.insert(0, _REPO)
    import medsynth_app  # noqa: F401

import lib.configs  # noqa: E402  (MONAI Label puts the app folder on sys.path only while it loads this file)
import lib.trainers  # noqa: E402,F401  (imported now for the same reason: trainers are built after loading)
from lib.dicomweb import datastore_for  # noqa: E402
from lib.extra_images import install as install_extra_images  # noqa: E402
from lib.infers.synthesis import TASK_TYPE  # noqa: E402
from lib.error_bodies import install as install_error_bodies, without_server_paths  # noqa: E402
from lib.token_check import install as install_token_check  # noqa: E402
from lib.upload_limit import install as install_upload_limit  # noqa: E402
from lib.uploads import local_datastore, sessions  # noqa: E402

from fastapi import HTTPException  # noqa: E402
from medsynth_app.imageio import Provenance  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.config import TaskConfig  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402

logger = logging.getLogger(__name__)
DEFAULT_MAX_UPLOAD_MB = 1024


def discover_configs() -> Dict[str, type]:
    """family name (module name) -> TaskConfig subclass defined in lib/configs/<family>.py.

    MONAI Label's own ``get_class_names`` only sees classes whose *direct* base is named TaskConfig; ours derive from
    lib.family_config.SynthesisTaskConfig, so discovery uses issubclass. Imports happen here, while the app folder is
    still on sys.path."""
    configs = {}
    for info in pkgutil.iter_modules(lib.configs.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"lib.configs.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, TaskConfig) and cls.__module__ == module.__name__ and not inspect.isabstract(cls):
                configs[info.name.lower()] = cls
    return dict(sorted(configs.items()))


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.model_dir = os.path.join(app_dir, "model")
        # The app's own temporary folder (mode 0700): MONAI Label keeps uploaded files and results in the process's
        # temporary folder, and only files there are admitted as request images besides the datastore and sessions.
        self.temp_dir = tempfile.mkdtemp(prefix="medsynth-app-")
        tempfile.tempdir = self.temp_dir
        atexit.register(shutil.rmtree, self.temp_dir, True)
        if install_token_check():
            logger.info("+++ Authentication on: bearer tokens verified with RS256")
        max_upload_mb = float(conf.get("max_upload_mb") or DEFAULT_MAX_UPLOAD_MB)
        if install_upload_limit(int(max_upload_mb * 2**20)):
            logger.info("+++ Upload limit: %g MB per request", max_upload_mb)
        install_error_bodies()
        install_extra_images()  # the uncertainty map as a further field of the multipart infer answer
        configs = discover_configs()
        requested = [m.strip().lower() for m in (conf.get("models") or "all").split(",") if m.strip()]
        invalid = [m for m in requested if m != "all" and m not in configs]
        if invalid:
            raise ValueError(f"unknown model famil{'ies' if len(invalid) > 1 else 'y'} {', '.join(invalid)} in "
                             f"--conf models; available: all, {', '.join(configs)}")
        self.models: Dict[str, TaskConfig] = {}
        for name, cls in configs.items():
            if "all" in requested or name in requested:
                config = cls()
                config.init(name, self.model_dir, conf, None)
                self.models[name] = config
        logger.info("+++ Using model families: %s", list(self.models))

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"MedSynth - MRI contrast synthesis ({medsynth_app.__version__})",
            description="Synthesise a missing MRI contrast (T1, T1C, T2, PD, FLAIR, DWI) from the acquired ones",
            version=medsynth_app.__version__,
        )

    def init_datastore(self):
        """MONAI Label's datastores; the local one checks uploaded images and refuses a folder of study folders
        (lib/uploads.py)."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return local_datastore(self.studies)

    def _load_sessions(self, load=False):
        """MONAI Label's sessions, checking each upload on arrival (lib/uploads.py)."""
        return sessions() if load else None

    def _init_dicomweb_datastore(self):
        """A PACS (``--studies http://HOST/dicom-web``): studies and contrasts from its metadata, results stored back
        into it (lib/dicomweb.py). MONAI Label's own would first download the dcmqi tools for DICOM SEG labels,
        which synthesis never writes."""
        return datastore_for(self.studies)

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, config in self.models.items():
            tasks = config.infer()
            tasks = tasks if isinstance(tasks, dict) else {name: tasks}
            for key, task in tasks.items():
                if hasattr(task, "datastore"):
                    task.datastore = self.datastore()  # lets the task find the other contrasts of a study
                logger.info("+++ Adding Inferer:: %s => %s", key, task)
                infers[key] = task
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {}
        for name, config in self.models.items():
            task = config.trainer()
            if task:
                logger.info("+++ Adding Trainer:: %s => %s", name, task)
                trainers[name] = task
        return trainers

    def infer(self, request, datastore=None):
        task = self._infers.get(request.get("model"))
        if task is None:  # MONAI Label's own answer is a bare 500
            raise HTTPException(404, f"model {request.get('model')!r} is not served here; served: "
                                     f"{', '.join(self._infers) or 'none'}")
        if getattr(task, "type", None) != TASK_TYPE:
            return super().infer(request, datastore)
        # A synthetic image is not a label: MONAI Label's own saving (labels/final, what trainers read) is never used
        # for it. With {"save": true} it is kept under labels/synthetic_<TARGET>/ of the datastore image instead; on a
        # PACS it is stored as a synthetic series of the image's study, by default.
        datastore = datastore or self.datastore()
        pacs = hasattr(datastore, "store_synthetic")
        save = str(request.get("save", pacs)).lower() in ("true", "1", "yes")
        image_id = request.get("image")
        self._check_image_source(image_id, datastore)
        if save and (not isinstance(image_id, str) or os.path.exists(image_id)):
            raise HTTPException(422, "save: true needs an image of the datastore; a session's result is not stored")
        result = super().infer(dict(request, save_label=False, datastore_image=image_id), datastore)
        if save and pacs:
            params = result["params"]
            provenance = Provenance(model=params["model"], inputs=tuple(params["inputs"]), target=params["target"],
                                    library_version=medsynth_app.__version__)
            params["stored_series"] = datastore.store_synthetic(image_id, result["file"], provenance)
        elif save:
            tag = f"synthetic_{result['params']['target']}"
            datastore.save_label(image_id, result["file"], tag, {"synthetic": True, "params": result["params"]})
            result["params"]["saved"] = f"labels/{tag}/{os.path.basename(datastore.get_label_uri(image_id, tag))}"
        return result

    def _check_image_source(self, image, datastore) -> None:
        """Only a datastore image id, a session folder (PUT /session/) or a file uploaded with the request: MONAI
        Label also takes server paths as image ids and lets params override ``image``, which would let a client
        read any file of the server."""
        if not isinstance(image, str) or not image:
            raise HTTPException(422, "no image: give a datastore image id, a session_id or an uploaded file")
        if not os.path.isabs(image) and datastore.get_image_uri(image):
            return
        real = os.path.realpath(image)
        sessions = self.sessions()
        roots = [sessions.store_path] if sessions is not None else []
        if any(os.path.commonpath([real, os.path.realpath(r)]) == os.path.realpath(r) for r in roots):
            return
        # a file uploaded with the request, which MONAI Label keeps as tempfile.NamedTemporaryFile in the app's folder
        if os.path.dirname(real) == os.path.realpath(self.temp_dir):
            return
        raise HTTPException(404, without_server_paths(
            f"image {image!r} is not an image of the datastore, a session or an uploaded file"))
