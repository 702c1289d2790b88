"""What belongs to one study: the acquired volume a synthetic one is compared with, and sending a study's acquired
volumes to the server's datastore (MONAI Label ``PUT /datastore/?image=``) so that the server can retrain on it.
"""
from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional

from . import hierarchy, mrml_io
from .logic import ATTR_TARGET, INPUT_CONTRASTS, check_one_study, is_synthetic
from .contrasts import CONTRASTS


def compare_partner(synthetic, inputs: Mapping[str, Any]):
    """The acquired volume to show beside ``synthetic``: the acquired target itself when it is among ``inputs``
    (a synthetic FLAIR beside the real FLAIR), else the first input in canonical order."""
    target = synthetic.GetAttribute(ATTR_TARGET)
    acquired = {c: n for c, n in inputs.items() if n is not None and not is_synthetic(mrml_io.attributes(n))}
    if not acquired:
        raise ValueError("no acquired volume is selected to compare with")
    if target in acquired:
        return acquired[target]
    return next(acquired[c] for c in CONTRASTS if c in acquired)


@dataclass
class UploadItem:
    contrast: str
    name: str  # the node's name
    image_id: str  # the datastore image id; the file goes as <image_id>.nii.gz
    copy: Any  # detached copy of the node, written in the worker thread
    dimensions: tuple = ()
    spacing: tuple = ()


@dataclass
class UploadPlan:
    """Exactly what "send this study" uploads; :meth:`describe` is shown for confirmation before :meth:`send`."""

    study_id: str
    items: List[UploadItem] = field(default_factory=list)

    def describe(self) -> List[str]:
        return [f"{i.name} as {i.image_id}.nii.gz ({i.contrast}; {'x'.join(map(str, i.dimensions))} voxels of "
                f"{' x '.join(f'{s:.3g}' for s in i.spacing)} mm)" for i in self.items]

    def send(self, client, report: Callable = lambda f, m: None, cancel_event=None,
             temp_root: Optional[str] = None) -> List[str]:
        """Write and upload every item (any thread); returns the datastore image ids."""
        folder = Path(tempfile.mkdtemp(prefix="medsynth_upload_", dir=temp_root))
        try:
            sent = []
            for number, item in enumerate(self.items):
                report(number / len(self.items), f"sending {item.name} as {item.image_id}...")
                path = mrml_io.write_volume(item.copy, str(folder / f"{item.image_id}.nii.gz"))
                client.upload_image(path, item.image_id, {"source": "3D Slicer MedSynth module"},
                                    cancel_event=cancel_event)
                sent.append(item.image_id)
            return sent
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def upload_plan(inputs: Mapping[str, Any], study_id: Optional[str] = None) -> UploadPlan:
    """The acquired volumes among ``inputs`` (contrast -> node), all of one patient and study (no override here: a
    datastore study must be one study), named ``<study_id>_<contrast>`` -- a new random id, so that no patient
    identifier travels in a name. A synthetic volume is never sent."""
    nodes = {c: n for c, n in inputs.items() if n is not None}
    synthetic = [n.GetName() for n in nodes.values() if is_synthetic(mrml_io.attributes(n))]
    if synthetic:
        raise ValueError(f"{', '.join(synthetic)} is synthetic: only acquired volumes go to the datastore")
    if not nodes:
        raise ValueError("choose the study's volumes in the input selectors first")
    check_one_study(hierarchy.origins(nodes))
    study_id = study_id or f"slicer_{uuid.uuid4().hex[:8]}"
    plan = UploadPlan(study_id)
    for contrast in (c for c in INPUT_CONTRASTS if c in nodes):
        node = nodes[contrast]
        plan.items.append(UploadItem(contrast, node.GetName(), f"{study_id}_{contrast}", mrml_io.detached_copy(node),
                                     tuple(node.GetImageData().GetDimensions()), tuple(node.GetSpacing())))
    return plan
