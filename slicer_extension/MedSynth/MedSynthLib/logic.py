"""Request/response logic of the MedSynth Slicer module, without Slicer or Qt.

- :func:`model_choices` / :func:`choose_inputs`: what a synthesis model offers (from ``/info``) and which of the
  selected contrasts to send for a target.
- :func:`prefill`, :func:`check_one_study`: volume selectors pre-filled from node names with the library's rules,
  within one study, synthetic nodes skipped; inputs of several patients or studies refused.
- :func:`result_node_name`, :func:`result_attributes`, :func:`window_level`: how a result node is named, marked and
  displayed.
- :class:`BackgroundTask`: runs a request off the GUI thread; the GUI polls it (a QTimer in the Widget) and gets its
  progress, result and errors back in the GUI thread.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from .contrasts import CONTRASTS, MASKS, parse_name

# Contrasts the panel has a selector for (DWI is a diffusion series, not offered as a Slicer input).
INPUT_CONTRASTS = ("T1", "T1C", "T2", "PD", "FLAIR")

ATTR_SYNTHETIC = "MedSynth.Synthetic"
ATTR_MODEL = "MedSynth.Model"
ATTR_TARGET = "MedSynth.Target"
ATTR_INPUTS = "MedSynth.Inputs"
ATTR_SERVER = "MedSynth.Server"
ATTR_TIME = "MedSynth.Time"
ATTR_CHECKPOINT = "MedSynth.Checkpoint"
ATTR_OUTPUT = "MedSynth.Output"  # "image", or the name of another image of the same answer (an uncertainty map)
ATTR_MIXED_STUDIES = "MedSynth.MixedStudiesOverride"  # set only when a research override sent several studies
LOCAL_SERVER = "local"


# ---- models ------------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One checkpoint of a model for one target."""

    checkpoint: str
    inputs: List[str]
    required: List[str]
    optional: List[str]
    validation: Dict[str, float] = field(default_factory=dict)  # metric -> value on the held-out subjects
    validation_subjects: int = 0
    training_subjects: int = 0
    training_datasets: List[str] = field(default_factory=list)

    def summary(self, target: str) -> str:
        """``T1+T2 -> FLAIR: validation PSNR 21.03 dB, SSIM 0.640 (2 subjects); trained on 30 subjects (brats)``."""
        text = f"{'+'.join(self.inputs) or 'any'} -> {target}"
        metrics = {k.lower(): v for k, v in self.validation.items() if isinstance(v, (int, float))}
        if "psnr" in metrics or "ssim" in metrics:
            parts = ([f"PSNR {metrics['psnr']:.2f} dB"] if "psnr" in metrics else []) + (
                [f"SSIM {metrics['ssim']:.3f}"] if "ssim" in metrics else [])
            text += f": validation {', '.join(parts)} ({self.validation_subjects} subjects)"
        else:
            text += ": no validation figures"
        if self.training_subjects:
            text += f"; trained on {self.training_subjects} subjects"
            if self.training_datasets:
                text += f" ({', '.join(self.training_datasets)})"
        return text


@dataclass
class ModelChoice:
    name: str
    targets: List[str]
    variants: Dict[str, List[Variant]] = field(default_factory=dict)  # target -> checkpoints
    description: str = ""

    def inputs_for(self, target: str) -> List[str]:
        """Every contrast some checkpoint of ``target`` can use, in canonical order."""
        used = {c for v in self.variants.get(target, []) for c in v.inputs}
        return [c for c in CONTRASTS if c in used]

    def summary(self) -> str:
        """One line per checkpoint: inputs, target, validation PSNR/SSIM and training data (from ``/info``)."""
        lines = [f"{self.name}: {self.description}" if self.description else self.name]
        lines += [variant.summary(target) for target in self.targets for variant in self.variants.get(target, [])]
        return "\n".join(lines)


def model_choices(models: Mapping[str, Mapping[str, Any]]) -> Dict[str, ModelChoice]:
    """name -> :class:`ModelChoice` from the ``synthesis`` entries of ``/info`` (``MedSynthClient.synthesis_models``
    or ``local.local_models``); a model with no trained checkpoint yet (no targets) is left out."""
    out = {}
    for name, entry in models.items():
        targets = [str(t) for t in entry.get("targets") or []]
        if not targets:
            continue
        variants = {}
        for target, rows in (entry.get("checkpoints") or {}).items():
            variants[target] = [Variant(str(r.get("checkpoint", "")), list(r.get("inputs") or []),
                                        list(r["required_inputs"] if "required_inputs" in r else r.get("inputs") or []),
                                        list(r.get("optional_inputs") or []), dict(r.get("validation") or {}),
                                        int(r.get("validation_subjects") or 0), int(r.get("training_subjects") or 0),
                                        list(r.get("training_datasets") or [])) for r in rows]
        out[name] = ModelChoice(name, targets, variants, str(entry.get("description", "")))
    return out


def choose_inputs(model: ModelChoice, target: str, available: Iterable[str]) -> List[str]:
    """The contrasts to send to synthesise ``target``: those of the checkpoint whose required inputs are all
    ``available`` and that uses the most of them (its required ones plus the available optional ones), in canonical
    order -- the first one's grid is the result's. Raises ValueError naming what is missing."""
    available = set(available)
    if target not in model.targets:
        raise ValueError(f"model {model.name} does not synthesise {target}; it synthesises "
                         f"{', '.join(model.targets) or 'nothing'}")
    if target in available:
        available.discard(target)  # never send the acquired target itself: it would be an input
    best: Optional[List[str]] = None
    missing_reports = []
    for variant in model.variants.get(target, []):
        missing = [c for c in variant.required if c not in available]
        if missing:
            missing_reports.append(f"{'+'.join(variant.inputs)} (missing {'+'.join(missing)})")
            continue
        used = [c for c in CONTRASTS if c in variant.required or (c in variant.optional and c in available)]
        if best is None or len(used) > len(best):
            best = used
    if best is None:
        if not model.variants.get(target):
            raise ValueError(f"model {model.name} lists no checkpoint for {target}")
        raise ValueError(f"{model.name} cannot synthesise {target} from "
                         f"{'+'.join(c for c in CONTRASTS if c in available) or 'no selected volume'}: it needs "
                         f"{' or '.join(missing_reports)}")
    return best


# ---- selectors ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Origin:
    """The patient and study a volume belongs to; None when nothing says (a file of unknown subject)."""

    patient: Optional[str] = None
    study: Optional[str] = None
    patient_label: str = ""
    study_label: str = ""

    def describe(self) -> str:
        if self.patient is None and self.study is None:
            return "no patient or study"
        return ", ".join(x for x in (f"patient {self.patient_label}" if self.patient else "",
                                     f"study {self.study_label}" if self.study else "") if x)


@dataclass
class VolumeInfo:
    """What pre-filling needs to know of a loaded volume node."""

    id: str
    name: str
    synthetic: bool = False
    label_map: bool = False
    origin: Origin = Origin()


class StudyMismatch(ValueError):
    """The chosen inputs belong to several patients or studies."""


def contrast_of(name: str) -> Optional[str]:
    """The contrast a node name says (``sub01_T2w`` -> T2, ``3DFLAIR`` -> FLAIR), None for masks and unknown names."""
    parsed = parse_name(name)
    if parsed is None or parsed.contrast in MASKS:
        return None
    return parsed.contrast


def prefill(volumes: Sequence[VolumeInfo], contrasts: Sequence[str] = INPUT_CONTRASTS,
            within: Optional[Origin] = None) -> Dict[str, str]:
    """contrast -> node id for the selectors, all from one study: ``within`` (the study of the user's first pick),
    else the study of the most recently added recognised volume. Synthetic volumes and label maps are never chosen;
    when several volumes of that study claim a contrast, the most recently added one (last in scene order) wins."""
    candidates = [(v, contrast_of(v.name)) for v in volumes if not v.synthetic and not v.label_map]
    candidates = [(v, c) for v, c in candidates if c in contrasts]
    if not candidates:
        return {}
    anchor = within if within is not None else candidates[-1][0].origin
    return {c: v.id for v, c in candidates if same_study(v.origin, anchor)}


def same_study(a: Origin, b: Origin) -> bool:
    return a.patient == b.patient and a.study == b.study


def check_one_study(origins: Mapping[str, Origin]) -> Dict[str, Origin]:
    """Raises :class:`StudyMismatch` naming the inputs when they are not all of one patient and study; returns the
    origins otherwise."""
    groups: Dict[Origin, List[str]] = {}
    for contrast, origin in origins.items():
        key = Origin(origin.patient, origin.study)
        groups.setdefault(key, []).append(contrast)
    if len(groups) > 1:
        described = "; ".join(f"{'+'.join(cs)}: {origins[cs[0]].describe()}" for cs in groups.values())
        raise StudyMismatch(f"the inputs are not of one patient and study ({described}). Choose volumes of one "
                            "study, or tick the research override to send them anyway")
    return dict(origins)


def is_synthetic(attributes: Mapping[str, Optional[str]]) -> bool:
    return str(attributes.get(ATTR_SYNTHETIC) or "").lower() == "true"


# ---- results -----------------------------------------------------------------------------------------------------
def result_node_name(target: str, model: str, when: Optional[float] = None, output: str = "image") -> str:
    """``FLAIR (synthetic, synnet, 14:03:27)``; another image of the answer: ``FLAIR uncertainty (synthetic, ...)``."""
    stamp = time.strftime("%H:%M:%S", time.localtime(time.time() if when is None else when))
    what = target if output == "image" else f"{target} {output}"
    return f"{what} (synthetic, {model}, {stamp})"


def result_attributes(model: str, target: str, inputs: Mapping[str, str], server: str,
                      when: Optional[float] = None, checkpoint: str = "", output: str = "image",
                      mixed: Optional[Mapping[str, Origin]] = None) -> Dict[str, str]:
    """Node attributes of a synthetic volume. ``inputs``: contrast -> name of the input node used; ``mixed``: the
    inputs' patients and studies when a research override sent several."""
    attributes = {
        ATTR_SYNTHETIC: "true",
        ATTR_MODEL: model,
        ATTR_TARGET: target,
        ATTR_INPUTS: json.dumps(dict(inputs)),
        ATTR_SERVER: server,
        ATTR_TIME: time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() if when is None else when)),
    }
    attributes[ATTR_OUTPUT] = output
    if checkpoint:
        attributes[ATTR_CHECKPOINT] = checkpoint
    if mixed:
        attributes[ATTR_MIXED_STUDIES] = json.dumps({c: o.describe() for c, o in mixed.items()})
    return attributes


def window_level(values) -> tuple:
    """(window, level) spanning the 1st-99th percentiles of the non-zero voxels (a synthetic image is 0 outside the
    brain; all voxels when none is non-zero)."""
    import numpy as np  # ships with Slicer; imported here so that the rest of this module needs only the stdlib

    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[np.isfinite(array)]
    inside = array[array != 0]
    sample = inside if inside.size else array
    if not sample.size:
        return 1.0, 0.5
    low, high = np.percentile(sample, [1.0, 99.0])
    window = float(high - low)
    if window <= 0:
        window = max(abs(float(high)), 1.0)
    return window, float((high + low) / 2.0)


# ---- training ----------------------------------------------------------------------------------------------------
TRAINING_ACTIVE = ("SUBMITTED", "RUNNING")


def describe_training(task: Optional[Mapping[str, Any]], stats: Optional[Mapping[str, Any]] = None):
    """(text, fraction or None, active) for the training section, from the server's task record (``GET /train/``:
    status, details = log lines) and the model's ``train_stats`` of ``/info`` (epoch, total_epochs, best_metric,
    total_time, stage, message)."""
    stats = dict(stats or {})
    if not task and not stats:
        return "No training has run on this server.", None, False
    status = str((task or {}).get("status") or stats.get("status") or "?")
    active = status in TRAINING_ACTIVE
    parts = [f"Training {status}"]
    epoch, total = stats.get("epoch"), stats.get("total_epochs")
    fraction = None
    if isinstance(epoch, (int, float)) and isinstance(total, (int, float)) and total:
        parts.append(f"epoch {int(epoch)}/{int(total)}")
        fraction = max(0.0, min(1.0, float(epoch) / float(total)))
    elif stats.get("stage"):
        parts.append(str(stats["stage"]))
    if stats.get("best_metric") is not None:
        parts.append(f"best validation {float(stats['best_metric']):.4g}")
    if stats.get("total_time"):
        parts.append(f"{float(stats['total_time']):.0f} s")
    text = ", ".join(parts)
    details = list((task or {}).get("details") or [])
    last = str(stats.get("message") or (details[-1] if details else "")).strip()
    if last and not active:
        text += f": {last[-200:]}"
    return text, fraction, active


# ---- background work ---------------------------------------------------------------------------------------------
class BackgroundTask:
    """Runs ``work(report, cancel_event)`` in a daemon thread. ``report(fraction or None, message)`` may be called
    from the thread; :meth:`poll` -- called from the GUI thread, e.g. by a QTimer -- delivers the queued progress
    to ``on_progress`` and, once, the outcome to ``on_done(result)``, ``on_error(exception, traceback_text)`` or
    ``on_cancelled()``, all in the polling thread. No Qt here: the Widget owns the timer."""

    def __init__(self, work: Callable[[Callable, threading.Event], Any],
                 on_progress: Optional[Callable[[Optional[float], str], None]] = None,
                 on_done: Optional[Callable[[Any], None]] = None,
                 on_error: Optional[Callable[[BaseException, str], None]] = None,
                 on_cancelled: Optional[Callable[[], None]] = None, name: str = "medsynth"):
        self.work = work
        self.on_progress, self.on_done, self.on_error, self.on_cancelled = on_progress, on_done, on_error, on_cancelled
        self.cancel_event = threading.Event()
        self._events: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._finished = False

    def start(self) -> "BackgroundTask":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def finished(self) -> bool:
        """True once the outcome has been delivered by :meth:`poll`."""
        return self._finished

    def _report(self, fraction: Optional[float], message: str = "") -> None:
        self._events.put(("progress", fraction, message))

    def _run(self) -> None:
        from .client import Cancelled

        try:
            result = self.work(self._report, self.cancel_event)
        except Cancelled:
            self._events.put(("cancelled", None, None))
        except BaseException as err:  # noqa: BLE001 - delivered to the GUI thread
            if self.cancel_event.is_set():
                self._events.put(("cancelled", None, None))
            else:
                self._events.put(("error", err, traceback.format_exc()))
        else:
            if self.cancel_event.is_set():
                self._events.put(("cancelled", result, None))
            else:
                self._events.put(("done", result, None))

    def poll(self) -> bool:
        """Deliver what happened since the last call; returns True when the task is finished."""
        while not self._finished:
            try:
                kind, a, b = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                if self.on_progress:
                    self.on_progress(a, b)
                continue
            self._finished = True
            if kind == "done" and self.on_done:
                self.on_done(a)
            elif kind == "error" and self.on_error:
                self.on_error(a, b)
            elif kind == "cancelled":
                if self.on_cancelled:
                    self.on_cancelled()
                cleanup = getattr(a, "cleanup", None)  # a result finished after cancel is discarded
                if callable(cleanup):
                    cleanup()
        return self._finished

    def wait(self, timeout: float = 600.0, interval: float = 0.05) -> bool:
        """Poll until finished (tests, and Slicer's self-test without a GUI event loop); True when finished."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.poll():
                return True
            time.sleep(interval)
        return self.poll()
