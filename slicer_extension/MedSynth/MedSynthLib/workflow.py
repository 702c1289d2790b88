"""One synthesis from MRML volume nodes to a new MRML volume node, in three steps:

1. :meth:`SynthesisWorkflow.prepare` (GUI thread, touches MRML): checks the inputs, chooses the contrasts to send,
   writes them to a temporary folder keeping their geometry;
2. :meth:`SynthesisWorkflow.run` (any thread, no MRML): uploads them as one session and infers on the server, or
   synthesises locally;
3. :meth:`SynthesisWorkflow.finish` (GUI thread): reads the result into a NEW scalar volume node, marks it
   synthetic, gives it a window/level, and removes the temporary files.

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

from . import mrml_io
from .client import MedSynthClient, MedSynthError
from .logic import (LOCAL_SERVER, BackgroundTask, ModelChoice, choose_inputs, is_synthetic, result_attributes,
                    result_node_name, window_level)


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
    def prepare(self, inputs: Mapping[str, Any], model: ModelChoice, target: str) -> SynthesisJob:
        """``inputs``: contrast -> vtkMRMLScalarVolumeNode (None entries ignored)."""
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
        transforms = {nodes[c].GetTransformNodeID() for c in used}
        if len(transforms) > 1:
            raise ValueError("the inputs are under different transforms; harden them "
                             "(Data module: right-click, Harden transform) before synthesising")
        folder = Path(tempfile.mkdtemp(prefix="medsynth_", dir=self.temp_root))
        job = SynthesisJob(model.name, target, used, {c: nodes[c].GetID() for c in used},
                           {c: nodes[c].GetName() for c in used}, next(iter(transforms)), folder)
        try:
            for contrast in used:
                job.files[contrast] = mrml_io.write_volume(nodes[contrast], str(folder / f"{contrast}.nii.gz"))
        except Exception:
            job.cleanup()
            raise
        return job

    # ---- 2. worker thread --------------------------------------------------------------------------------------
    def run(self, job: SynthesisJob, report: Callable = lambda f, m: None, cancel_event=None) -> SynthesisJob:
        begin = time.time()
        sent = "+".join(job.used)
        if self.client is None:
            from .local import synthesize_local

            report(0.2, f"synthesising {job.target} from {sent} locally...")
            job.result_path, job.params = synthesize_local(job.model, job.target, job.files, str(job.folder),
                                                           cancel_event=cancel_event)
        else:
            report(0.1, f"uploading {sent} to {self.client.address}...")
            job.session_id = self.client.upload_session(job.files, cancel_event=cancel_event)
            report(0.4, f"synthesising {job.target} on the server...")
            try:
                result = self.client.synthesize_result(job.model, job.target, session_id=job.session_id,
                                                       cancel_event=cancel_event, out_dir=str(job.folder))
            finally:
                try:
                    self.client.delete_session(job.session_id)
                except MedSynthError:
                    pass  # the server drops it at expiry anyway
            job.result_path, job.params = result.path, result.params
        job.seconds = round(time.time() - begin, 2)
        report(0.9, f"{job.target} received in {job.seconds:.1f} s; loading...")
        return job

    # ---- 3. GUI thread -----------------------------------------------------------------------------------------
    def finish(self, job: SynthesisJob):
        """The new volume node (the inputs are never touched); the temporary files are removed."""
        try:
            if not job.result_path:
                raise MedSynthError("no result to load")
            node = mrml_io.read_volume(job.result_path, self.scene, result_node_name(job.target, job.model))
            used = job.params.get("inputs") if isinstance(job.params.get("inputs"), dict) else None
            names = {c: job.node_names[c] for c in (used or job.node_names) if c in job.node_names}
            mrml_io.set_attributes(node, result_attributes(job.model, job.target, names or job.node_names,
                                                           self.server, checkpoint=str(job.params.get("checkpoint", ""))))
            if job.transform_id:
                node.SetAndObserveTransformNodeID(job.transform_id)
            mrml_io.show(node, *window_level(mrml_io.voxels(node)))
            return node
        finally:
            job.cleanup()

    # ---- all of it ---------------------------------------------------------------------------------------------
    def synthesize(self, inputs: Mapping[str, Any], model: ModelChoice, target: str, report=lambda f, m: None):
        """Synchronously (scripts, tests)."""
        job = self.prepare(inputs, model, target)
        try:
            self.run(job, report)
        except BaseException:
            job.cleanup()
            raise
        return self.finish(job)

    def start(self, inputs: Mapping[str, Any], model: ModelChoice, target: str,
              on_progress: Optional[Callable] = None, on_done: Optional[Callable] = None,
              on_error: Optional[Callable] = None, on_cancelled: Optional[Callable] = None) -> BackgroundTask:
        """Prepare now (GUI thread), run in a background thread, finish in whichever thread calls ``poll()`` on the
        returned task; ``on_done(node)``, ``on_error(exception, traceback_text)``."""
        job = self.prepare(inputs, model, target)

        def work(report, cancel_event):
            try:
                return self.run(job, report, cancel_event)
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
            on_progress(0.05, f"sending {'+'.join(job.used)}...")
        return BackgroundTask(work, on_progress, done, on_error, cancelled, name="medsynth-synthesis").start()
