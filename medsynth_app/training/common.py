"""Pieces the deep families share: validation scores, settings resolution, weight (de)serialisation."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from ..metrics import data_range, region_metrics
from ..preprocessing import PreparedSubject

VALIDATION_METRIC = "psnr"


def validation_scores(predict: Callable[[PreparedSubject, str], np.ndarray], subjects: Sequence[PreparedSubject],
                      targets: Sequence[str]) -> dict[str, float]:
    """EVALUATION.md metrics (`metrics.region_metrics`, as `pipeline.score_subject`) of the clipped predictions of
    every target on every whole validation subject, averaged; "metric" (what early stopping maximises) is the mean
    PSNR."""
    rows = []
    for subject in subjects:
        for target in targets:
            if target not in subject.images:
                continue
            prediction = np.clip(predict(subject, target), 0, None)
            rows.append(region_metrics(prediction, subject.images[target], subject.mask, None))
    if not rows:
        raise ValueError("no validation subject holds a target")
    means = {f"val_{k}": float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "mae")}
    return {"metric": means[f"val_{VALIDATION_METRIC}"], **means}


def typical_data_range(subjects: Sequence[PreparedSubject], target: str) -> float:
    """The median over the subjects holding ``target`` of EVALUATION.md's data range (brain max - min): the range a
    training-time SSIM takes, as the metric takes each test volume's own."""
    ranges = [data_range(s.images[target], s.mask.astype(bool)) for s in subjects if target in s.images]
    if not ranges:
        raise ValueError(f"no training subject holds {target}")
    return float(np.median(ranges))


def recalibrate_batch_norm(net: nn.Module, batches: Iterable[Tensor]) -> None:
    """Every batch norm's running statistics recomputed as the plain average over ``batches`` of network inputs
    (`torch.optim.swa_utils.update_bn`, without gradients), the weights untouched: the exponential averages kept
    in training trail weights that were still moving, and saw the training's augmented inputs."""
    with torch.no_grad():
        update_bn(batches, net, module_device(net))


def learning_rate(settings, default: float) -> float:
    return float(settings.learning_rate) if settings.learning_rate is not None else float(default)


def prefixed_state(module: nn.Module, prefix: str = "net.") -> dict[str, torch.Tensor]:
    """The module's weights on the CPU, keys prefixed (weights only: safe for ``torch.load(weights_only=True)``)."""
    return {prefix + k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def unprefixed_state(state: dict, prefix: str = "net.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))
