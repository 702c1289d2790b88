"""End-to-end operations on studies: train, synthesize, evaluate. The CLI and the server call these."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from . import __version__
from .checkpoint import Checkpoint
from .imageio import Provenance, read_image
from .metrics import region_metrics
from .models import TrainSettings, create, fine_tunes, finishing_hparams
from .models.base import SynthesisModel
from .normalization import IntensityNorm
from .preprocessing import PreparedSubject, prepare, restore
from .studies import Study
from .task import Task, join
from .training.schedule import SCHEDULE_SETTINGS
from .uncertainty import Calibration, prediction_and_spread

logger = logging.getLogger(__name__)


def prepare_study(
    study: Study,
    contrasts: Sequence[str],
    reference: str,
    mask_from: Sequence[str],
    normalisation: str = "mean",
    divisor: int = 16,
) -> PreparedSubject:
    """Read a study's ``contrasts`` (and masks) and prepare them on the grid of ``reference``."""
    missing = [c for c in contrasts if c not in study.images]
    if missing:
        raise ValueError(f"study {study.id} lacks {join(missing)} (has {join(study.contrasts)})")
    images = {c: read_image(study.images[c]) for c in contrasts}
    return prepare(
        images,
        reference,
        brain_mask=read_image(study.brain_mask, mask=True) if study.brain_mask else None,
        lesion_mask=read_image(study.lesion_mask, mask=True) if study.lesion_mask else None,
        mask_from=tuple(mask_from),
        normalisation=normalisation,
        divisor=divisor,
        subject_id=study.id,
    )


def _prepare_all(studies: Sequence[Study], contrasts_of: Callable[[Study], list[str]], reference: Sequence[str],
                 normalisation: str, progress: bool, what: str, skipped: dict[str, str]) -> list[PreparedSubject]:
    """Prepared subjects, each with the contrasts ``contrasts_of`` names, on the grid of the first of ``reference``
    it holds; a study that cannot be read or prepared is left out and recorded in ``skipped``."""
    prepared = []
    for study in tqdm(studies, desc=f"preparing {what}", unit="study", disable=not progress):
        contrasts = contrasts_of(study)
        grid = next(c for c in [*reference, *contrasts] if c in contrasts)
        try:
            prepared.append(prepare_study(study, contrasts, grid, contrasts, normalisation))
        except ValueError as err:
            skipped[study.id] = str(err)
            logger.warning("skipped %s: %s", study.id, err)
    return prepared


def _prepare_split(studies: Sequence[Study], validation: Sequence[Study], contrasts_of: Callable[[Study], list[str]],
                   reference: Sequence[str], normalisation: str, progress: bool):
    """(training subjects, validation subjects, skipped study id -> reason): the studies for which ``contrasts_of``
    names contrasts, prepared with those on the grid of the first of ``reference`` they hold."""
    skipped: dict[str, str] = {}
    usable = [s for s in studies if contrasts_of(s)]
    train_subjects = _prepare_all(usable, contrasts_of, reference, normalisation, progress, "training studies",
                                  skipped)
    val_subjects = _prepare_all([s for s in validation if contrasts_of(s)], contrasts_of, reference, normalisation,
                                progress, "validation studies", skipped)
    return train_subjects, val_subjects, skipped


def _record_run(summary: dict, model, targets: Sequence[str], train_subjects: list[PreparedSubject],
                val_subjects: list[PreparedSubject], skipped: dict[str, str], seed: int, started: float) -> None:
    """Add the validation metrics of every target, the subjects, the seed and the wall time to a fit's summary (with
    the training seconds before a resumption: the time of a whole run, not of its last part)."""
    if val_subjects:
        summary["validation"] = _validation_metrics(model, targets, val_subjects)
    summary.update(subjects=[s.id for s in train_subjects], validation_subjects=[s.id for s in val_subjects],
                   skipped=skipped, seed=seed,
                   seconds=round(time.time() - started + seconds_before_resumption(summary), 1))


def _validation_metrics(model, targets: Sequence[str], val_subjects: list[PreparedSubject]) -> dict:
    return {target: _mean_rows([score_subject(model.predict(s, target), s, target)
                                for s in val_subjects if target in s.images])
            for target in targets}


def seconds_before_resumption(training: dict) -> float:
    """Training seconds of the epochs an interrupted run ran before it was resumed (validation not included)."""
    resumed = training.get("resumed_from_epoch") or 0
    return float(sum(row.get("train_seconds", 0.0) for row in training.get("history", [])
                     if 0 < row.get("epoch", 0) <= resumed))


def trainable_studies(family: str, inputs: Sequence[str], targets: Sequence[str], studies: Sequence[Study],
                      hparams: Mapping | None = None) -> list[Study]:
    """The studies that a ``family`` model with ``hparams`` can train or validate on."""
    model = create(family, inputs, targets, **dict(hparams or {}))
    return [s for s in studies if model.training_contrasts(s.contrasts)]


def train(
    family: str,
    inputs: Sequence[str],
    targets: Sequence[str],
    studies: Sequence[Study],
    validation: Sequence[Study] = (),
    *,
    hparams: Mapping | None = None,
    settings: TrainSettings | None = None,
    normalisation: str = "mean",
    init: Checkpoint | None = None,
) -> Checkpoint:
    """Train ``family`` on the studies holding every input and target (or, for a model trained on incomplete
    studies, those its `training_contrasts` accepts); returns the checkpoint (not yet saved).

    ``init`` fine-tunes: the network starts from that checkpoint's weights instead of a fresh initialisation. It must
    be of the same family, task and normalisation (a multimodal model may start from one trained for more
    contrasts: `starting_weights`); its hyperparameters are the defaults ``hparams`` overrides (change the loss or the
    schedule, not the architecture)."""
    settings = settings or TrainSettings()
    if init is not None:
        _check_fine_tuning(init, family, inputs, targets, normalisation)
        hparams = {**init.hparams, **dict(hparams or {})}
    model = create(family, inputs, targets, **dict(hparams or {}))
    if init is not None:
        try:
            state = model.starting_weights(init.state, init.inputs, init.targets)
        except ValueError as err:
            raise ValueError(f"cannot fine-tune {family} {Task(inputs, targets)} from a "
                             f"{init.family} {init.task} checkpoint: {err}") from None
        settings = dataclasses.replace(settings, initial_state=state)

    def contrasts_of(study: Study) -> list[str]:
        return model.training_contrasts(study.contrasts)

    if not any(contrasts_of(s) for s in studies):
        raise ValueError(f"no study has {join(dict.fromkeys([*inputs, *targets]))}; cannot train {family}")
    started = time.time()
    train_subjects, val_subjects, skipped = _prepare_split(studies, validation, contrasts_of, targets, normalisation,
                                                           settings.progress)
    if not train_subjects:
        raise ValueError(f"no usable training study for {family}: " + "; ".join(skipped.values()))
    summary = model.fit(train_subjects, val_subjects, settings)
    if init is not None:
        summary["fine_tuned_from"] = {"family": init.family, "task": init.task, "created": init.created,
                                      "validation": init.training.get("validation", {})}
    _record_run(summary, model, targets, train_subjects, val_subjects, skipped, settings.seed, started)
    target_norms = {t: IntensityNorm.typical([s.norms[t] for s in train_subjects if t in s.norms]).to_dict()
                    for t in targets}
    return Checkpoint.from_model(model, preprocessing={"normalisation": normalisation, "divisor": 16},
                                 target_norms=target_norms, training=summary)


def finish(checkpoint: Checkpoint, studies: Sequence[Study], validation: Sequence[Study] = (), *,
           hparams: Mapping, settings: TrainSettings | None = None) -> Checkpoint:
    """``checkpoint`` given its family's finishing step (`SynthesisModel.finish`, the last step of its fit) again with
    the finishing ``hparams``, on the studies it trained on: the checkpoint `train` would have returned with those
    hyperparameters, without training again. Its training record gains the step's summary, the time it took and
    the validation metrics after it."""
    settings = settings or TrainSettings()
    allowed = finishing_hparams(checkpoint.family)
    foreign = sorted(set(hparams) - set(allowed))
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: not a finishing hyperparameter of {checkpoint.family} (those are: "
                         f"{', '.join(allowed) or 'none'})")
    model = create(checkpoint.family, checkpoint.inputs, checkpoint.targets, **{**checkpoint.hparams, **hparams})
    model.load_state_dict(checkpoint.state)
    started = time.time()
    train_subjects, val_subjects, _ = _prepare_split(
        studies, validation, lambda study: model.training_contrasts(study.contrasts), checkpoint.targets,
        checkpoint.preprocessing.get("normalisation", "mean"), settings.progress)
    trained_on = checkpoint.training.get("subjects")
    if trained_on is not None and sorted(s.id for s in train_subjects) != sorted(trained_on):
        raise ValueError(f"{checkpoint.family} {checkpoint.task}: finish it on the studies it trained on "
                         f"({', '.join(sorted(trained_on))})")
    summary = {**checkpoint.training, **model.finish(train_subjects, val_subjects, settings)}
    if val_subjects:
        summary["validation"] = _validation_metrics(model, checkpoint.targets, val_subjects)
    summary["seconds"] = round(checkpoint.training.get("seconds", 0.0) + time.time() - started, 1)
    return Checkpoint.from_model(model, preprocessing=checkpoint.preprocessing, target_norms=checkpoint.target_norms,
                                 training=summary)


def _check_fine_tuning(init: Checkpoint, family: str, inputs: Sequence[str], targets: Sequence[str],
                       normalisation: str) -> None:
    wanted = f"{family} {Task(inputs, targets)}"
    if init.family != family:
        raise ValueError(f"cannot fine-tune {wanted} from a {init.family} {init.task} checkpoint: the family must be "
                         "the same")
    trained_on = init.preprocessing.get("normalisation", "mean")
    if trained_on != normalisation:
        raise ValueError(f"cannot fine-tune {wanted} with {normalisation} normalisation from a checkpoint trained "
                         f"with {trained_on} normalisation")
    if not fine_tunes(family):
        raise ValueError(f"{family} cannot start from a checkpoint's weights: it is always trained from scratch")


ADD_OUTPUT_HPARAMS = ("crop", "min_brain", "max_steps_per_epoch", "amp", "lr_schedule", "patience", "min_delta",
                      "validate_every")


def add_output(
    checkpoint: Checkpoint,
    target: str,
    studies: Sequence[Study],
    validation: Sequence[Study] = (),
    *,
    settings: TrainSettings | None = None,
    hparams: Mapping | None = None,
) -> Checkpoint:
    """A new checkpoint that also synthesizes ``target``: a decoder added to the trained model and trained alone,
    everything else frozen (multimodal, Chartsias et al. Sec. VI-E); on the studies holding the inputs and ``target``.
    ``hparams`` may change how the decoder is trained (ADD_OUTPUT_HPARAMS), not the trained architecture."""
    settings = settings or TrainSettings()
    model = checkpoint.build()
    if not hasattr(model, "add_output"):
        raise ValueError(f"{checkpoint.family} cannot add an output decoder to a trained model (multimodal can)")
    fixed = sorted(set(hparams or {}) - set(ADD_OUTPUT_HPARAMS))
    if fixed:
        raise ValueError(f"adding an output keeps the trained {', '.join(fixed)}; only "
                         f"{', '.join(ADD_OUTPUT_HPARAMS)} may change")
    model.schedule = model.schedule.updated(hparams or {})
    model.hparams.update({k: v for k, v in (hparams or {}).items() if k not in SCHEDULE_SETTINGS})
    contrasts = [*checkpoint.inputs, target]
    normalisation = checkpoint.preprocessing.get("normalisation", "mean")
    started = time.time()
    train_subjects, val_subjects, skipped = _prepare_split(studies, validation,
                                                           lambda s: contrasts if s.has(contrasts) else [],
                                                           [target], normalisation, settings.progress)
    if not train_subjects:
        raise ValueError(f"no usable study has {join(contrasts)} to train a {target} decoder")
    summary = model.add_output(target, train_subjects, val_subjects, settings)
    _record_run(summary, model, [target], train_subjects, val_subjects, skipped, settings.seed, started)
    norm = IntensityNorm.typical([s.norms[target] for s in train_subjects]).to_dict()
    return Checkpoint.from_model(model, preprocessing=checkpoint.preprocessing,
                                 target_norms={**checkpoint.target_norms, target: norm},
                                 training={**checkpoint.training, "added_outputs": {
                                     **checkpoint.training.get("added_outputs", {}), target: summary}})


def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in rows[0]} if rows else {}


def score_subject(prediction: np.ndarray, subject: PreparedSubject, target: str) -> dict[str, float]:
    """EVALUATION.md metrics of a normalised prediction against the subject's normalised acquired target."""
    return region_metrics(prediction, subject.images[target], subject.mask, subject.lesion)


def synthesize(
    checkpoint: Checkpoint,
    images: Mapping[str, sitk.Image],
    target: str | None = None,
    *,
    brain_mask: sitk.Image | None = None,
    lesion_mask: sitk.Image | None = None,
    intensity: str = "scaled",
    model: SynthesisModel | None = None,
    uncertainty: Calibration | None = None,
) -> sitk.Image | tuple[sitk.Image, sitk.Image]:
    """Synthesize ``target`` from ``images`` (contrast -> image; the first input used gives the output grid).

    intensity "scaled" returns the target on the typical intensity scale of the training data; "normalised" keeps
    the model's normalised units (mean 1 inside the brain for mean normalisation). ``model``: the checkpoint's model
    already built (a server keeps it between requests); built from ``checkpoint`` when None. With ``uncertainty`` (the
    checkpoint's calibration, `uncertainty.calibration_for`) the answer is (image, uncertainty map): the expected
    absolute error per voxel, on the same grid and intensity scale.
    """
    target = target or checkpoint.targets[0]
    if target not in checkpoint.targets:
        raise ValueError(f"{checkpoint.family} ({checkpoint.task}) does not synthesize {target}")
    model = model or checkpoint.build()
    # A target is never its own input, nor does its acquired image shape the brain mask or the crop.
    used = model.usable_inputs([c for c in images if c != target])
    subject = prepare(
        {c: images[c] for c in used},
        reference=next(c for c in images if c in used),
        brain_mask=brain_mask,
        lesion_mask=lesion_mask,
        normalisation=checkpoint.preprocessing.get("normalisation", "mean"),
        divisor=int(checkpoint.preprocessing.get("divisor", 16)),
    )
    if intensity not in ("scaled", "normalised"):
        raise ValueError(f"intensity must be 'scaled' or 'normalised', not {intensity!r}")
    norm = checkpoint.target_norm(target) if intensity == "scaled" else None
    if uncertainty is None:
        return restore(np.clip(model.predict(subject, target), 0, None), subject, norm)
    prediction, spread = prediction_and_spread(model, subject, target)
    expected_error = uncertainty.apply(spread) * (norm.scale if norm is not None else 1.0)
    return restore(np.clip(prediction, 0, None), subject, norm), restore(expected_error, subject, None)


def evaluate(checkpoint: Checkpoint | Sequence[Checkpoint], studies: Sequence[Study], target: str,
             inputs: Sequence[str] | None = None, progress: bool = True,
             on_prediction: Callable[[PreparedSubject, np.ndarray], None] | None = None) -> list[dict]:
    """Per-subject metrics (EVALUATION.md) of a checkpoint on every study holding the inputs and the target.

    Several checkpoints (one family and task, e.g. trained with different seeds) are an ensemble: the mean of their
    predictions is scored. A study that cannot be read or prepared gets a row with its "error" instead of metrics.
    ``on_prediction`` sees every prepared subject with its normalised prediction (the benchmark keeps slices of some
    for its figures)."""
    members = [checkpoint] if isinstance(checkpoint, Checkpoint) else list(checkpoint)
    _check_ensemble(members)
    models = [member.build() for member in members]
    inputs = list(inputs or members[0].inputs)
    used = models[0].usable_inputs(inputs)
    rows = []
    for study in tqdm([s for s in studies if s.has([*used, target])], desc="evaluating", unit="study",
                      disable=not progress):
        started = time.time()
        try:
            subject = prepare_study(study, [*used, target], target, [*used, target],
                                    members[0].preprocessing.get("normalisation", "mean"))
        except ValueError as err:  # ImageError included: one unusable study must not end a whole evaluation
            rows.append({"id": study.id, "error": str(err)})
            continue
        prediction = np.mean([np.clip(model.predict(subject, target), 0, None) for model in models], axis=0)
        rows.append({"id": study.id, **score_subject(prediction, subject, target),
                     "seconds": round(time.time() - started, 2)})
        if on_prediction is not None:
            on_prediction(subject, prediction)
    return rows


def _check_ensemble(members: list[Checkpoint]) -> None:
    if not members:
        raise ValueError("no checkpoint to evaluate")
    first = members[0]
    for other in members[1:]:
        if (other.family, other.inputs, other.targets, other.preprocessing) != \
                (first.family, first.inputs, first.targets, first.preprocessing):
            raise ValueError(f"an ensemble needs checkpoints of one family, task and preprocessing: "
                             f"{first.family} {first.task} and {other.family} {other.task} differ")


def provenance_for(checkpoint: Checkpoint, inputs: Sequence[str], target: str) -> Provenance:
    return Provenance(model=checkpoint.family, inputs=tuple(inputs), target=target, library_version=__version__)
