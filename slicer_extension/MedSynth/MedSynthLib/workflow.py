"""One synthesis from MRML volume nodes to new MRML volume nodes, in four steps:

1. :meth:`SynthesisWorkflow.prepare` (GUI thread, touches MRML): checks the inputs (one patient and study unless a
   research override is given), chooses the contrasts to send, and copies their voxels and geometry (a memory copy);
2. :meth:`SynthesisWorkflow.run` (any thread, no scene): writes the copies to a temporary folder, uploads them as one
   session and infers on the server, or synthesises in a separate local process;
3. :meth:`SynthesisWorkflow.load` (any thread): reads the result (and any further image of the answer, such as an
   uncertainty map) into nodes outside the scene and computes their window/level;
4. :meth:`SynthesisWorkflow.finish` (GUI thread): adds them to the scene as NEW nodes beside the inputs in the
   subject hierarchy, marks them synthetic, and removes the temporary files.

:meth:`SynthesisWorkflow.start` chains them around a :class:`~MedSynthLib.logic.BackgroundTask`; the module's Logic
(MedSynth.py) is a thin layer over this class, so that all of it runs with ``slicer-core`` outside Slicer.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from . import hierarchy, mrml_io
from .client import MedSynthClient, MedSynthError
from .logic import (LOCAL_SERVER, BackgroundTask, ModelChoice, Origin, check_one_study, choose_inputs, is_synthetic,
                    result_attributes, result_node_name, window_level)


@dataclass
class SynthesisJob:
    model: str
    target: str
    used: List[str]  # contrasts sent, canonical order; the first one's grid is the result's
    node_ids: Dict[str, str]  # contrast -> input node id
    node_names: Dict[str, str]  # contrast -> input node name
    transform_id: Optional[str]
    folder: Path  # temporary: the inputs written for upload, and the result
    files: Dict[str, str] = field(default_factory=dict)
    result_path: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    session_id: Optional[str] = None
    seconds: float = 0.0
    copies: Dict[str, Any] = field(default_factory=dict)  # contrast -> detached copy of the input, to write
    mixed: Optional[Dict[str, Origin]] = None  # the inputs' studies, when a research override sent several
    extras: Dict[str, str] = field(default_factory=dict)  # further images of the answer: name -> path
    loaded: Dict[str, Any] = field(default_factory=dict)  # output -> (detached node, window, level)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class SynthesisWorkflow:
    """``scene``: the MRML scene (``slicer.mrmlScene``). ``client``: a :class:`MedSynthClient`, or None for local
    mode (``medsynth_app`` importable)."""

    def __init__(self, scene, client: Optional[MedSynthClient] = None, temp_root: Optional[str] = None):
        self.scene = scene
        self.client = client
        self.temp_root = temp_root

    @property
    def server(self) -> str:
        return self.client.address if self.client is not None else LOCAL_SERVER

    # ---- 1. GUI thread -----------------------------------------------------------------------------------------
    def prepare(self, inputs: Mapping[str, Any], model: ModelChoice, target: str,
                allow_mixed_studies: bool = False) -> SynthesisJob:
        """``inputs``: contrast -> vtkMRMLScalarVolumeNode (None entries ignored). Inputs of several patients or
        studies raise :class:`~MedSynthLib.logic.StudyMismatch` unless ``allow_mixed_studies`` (a research
        override, then recorded in the result's attributes)."""
        nodes = {c: n for c, n in inputs.items() if n is not None}
        for contrast, node in nodes.items():
            if node.GetImageData() is None:
                raise ValueError(f"{contrast}: volume {node.GetName()!r} holds no voxels")
            if node.IsA("vtkMRMLLabelMapVolumeNode"):
                raise ValueError(f"{contrast}: {node.GetName()!r} is a label map, not an image")
            if is_synthetic(mrml_io.attributes(node)):
                raise ValueError(f"{contrast}: {node.GetName()!r} is itself synthetic; choose an acquired volume")
            if node.GetImageData().GetNumberOfScalarComponents() != 1:
                raise ValueError(f"{contrast}: {node.GetName()!r} has several components per voxel (a colour or "
                                 "vector volume); choose a scalar MRI volume")
        used = choose_inputs(model, target, nodes)
        origins = hierarchy.origins({c: nodes[c] for c in used})
        mixed = None
        try:
            check_one_study(origins)
        except ValueError:
            if not allow_mixed_studies:
                raise
            mixed = origins
        transforms = {nodes[c].GetTransformNodeID() for c in used}
        if len(transforms) > 1:
            raise ValueError("the inputs are under different transforms; harden them "
                             "(Data module: right-click, Harden transform) before synthesising")
        folder = Path(tempfile.mkdtemp(prefix="medsynth_", dir=self.temp_root))
        job = SynthesisJob(model.name, target, used, {c: nodes[c].GetID() for c in used},
                           {c: nodes[c].GetName() for c in used}, next(iter(transforms)), folder,
                           copies={c: mrml_io.detached_copy(nodes[c]) for c in used}, mixed=mixed)
        return job

    # ---- 2. worker thread --------------------------------------------------------------------------------------
    def run(self, job: SynthesisJob, report: Callable = lambda f, m: None, cancel_event=None) -> SynthesisJob:
        begin = time.time()
        sent = "+".join(job.used)
        for contrast, copy in job.copies.items():
            if contrast not in job.files:
                report(None, f"writing {contrast}...")
                job.files[contrast] = mrml_io.write_volume(copy, str(job.folder / f"{contrast}.nii.gz"))
        if self.client is None:
            from .local import run_local_process

            report(None, f"synthesising {job.target} from {sent} in a local process...")
            job.result_path, job.params = run_local_process(job.model, job.target, job.files, str(job.folder),
                                                            cancel_event=cancel_event, report=report)
        else:
            report(None, f"uploading {sent} to {self.client.address}...")
            job.session_id = self.client.upload_session(job.files, cancel_event=cancel_event)
            report(None, f"synthesising {job.target} on the server...")
            try:
                result = self.client.synthesize_result(job.model, job.target, session_id=job.session_id,
                                                       cancel_event=cancel_event, out_dir=str(job.folder))
            finally:
                try:
                    self.client.delete_session(job.session_id)
                except MedSynthError:
                    pass  # the server drops it at expiry anyway
            job.result_path, job.params, job.extras = result.path, result.params, result.extras
        job.seconds = round(time.time() - begin, 2)
        report(None, f"{job.target} received in {job.seconds:.1f} s; loading...")
        return job

    def load(self, job: SynthesisJob) -> SynthesisJob:
        """Read the answer's images into nodes outside the scene, with their window/level (any thread)."""
        if not job.result_path:
            raise MedSynthError("no result to load")
        for output, path in {"image": job.result_path, **job.extras}.items():
            node = mrml_io.read_detached(path, output)
            job.loaded[output] = (node, *window_level(mrml_io.voxels(node)))
        return job

    # ---- 3. GUI thread -----------------------------------------------------------------------------------------
    def finish(self, job: SynthesisJob):
        """The new volume node (further images of the answer become nodes beside it); the inputs are never touched,
        the temporary files are removed."""
        try:
            if not job.loaded:
                self.load(job)
            used = job.params.get("inputs") if isinstance(job.params.get("inputs"), dict) else None
            names = {c: job.node_names[c] for c in (used or job.node_names) if c in job.node_names}
            reference = self.scene.GetNodeByID(job.node_ids[job.used[0]]) if job.node_ids else None
            when = time.time()
            nodes = {}
            for output, (node, window, level) in job.loaded.items():
                name, number = result_node_name(job.target, job.model, when, output), 1
                while self.scene.GetFirstNodeByName(name) is not None:  # two runs within one second
                    number += 1
                    name = f"{result_node_name(job.target, job.model, when, output)[:-1]}, {number})"
                self.scene.AddNode(node)
                node.SetName(name)
                mrml_io.set_attributes(node, result_attributes(
                    job.model, job.target, names or job.node_names, self.server, when,
                    str(job.params.get("checkpoint", "")), output, job.mixed))
                if job.transform_id:
                    node.SetAndObserveTransformNodeID(job.transform_id)
                if reference is not None:
                    hierarchy.place_beside(node, reference)
                mrml_io.show(node, window, level)
                nodes[output] = node
            return nodes["image"]
        finally:
            job.cleanup()

    # ---- all of it ---------------------------------------------------------------------------------------------
    def synthesize(self, inputs: Mapping[str, Any], model: ModelChoice, target: str, report=lambda f, m: None,
                   allow_mixed_studies: bool = False):
        """Synchronously (scripts, tests)."""
        job = self.prepare(inputs, model, target, allow_mixed_studies)
        try:
            self.load(self.run(job, report))
        except BaseException:
            job.cleanup()
            raise
        return self.finish(job)

    def start(self, inputs: Mapping[str, Any], model: ModelChoice, target: str,
              on_progress: Optional[Callable] = None, on_done: Optional[Callable] = None,
              on_error: Optional[Callable] = None, on_cancelled: Optional[Callable] = None,
              allow_mixed_studies: bool = False) -> BackgroundTask:
        """Prepare now (GUI thread), run and load in a background thread, finish in whichever thread calls
        ``poll()`` on the returned task; ``on_done(node)``, ``on_error(exception, traceback_text)``."""
        job = self.prepare(inputs, model, target, allow_mixed_studies)

        def work(report, cancel_event):
            try:
                return self.load(self.run(job, report, cancel_event))
            except BaseException:
                job.cleanup()
                raise

        def done(finished_job):
            try:
                node = self.finish(finished_job)
            except Exception as err:  # noqa: BLE001 - reported like a request error
                import traceback

                if on_error:
                    on_error(err, traceback.format_exc())
                return
            if on_done:
                on_done(node)

        def cancelled():
            job.cleanup()
            if on_cancelled:
                on_cancelled()

        if on_progress:
            on_progress(None, f"preparing {'+'.join(job.used)}...")
        return BackgroundTask(work, on_progress, done, on_error, cancelled, name="medsynth-synthesis").start()
