"""The training loop shared by the deep families.

`train_network` runs epochs over a Dataset, validates after every ``validate_every``-th epoch and the last (the
family's ``validate`` callable: the evaluation protocol's metrics on whole validation subjects; without validation
subjects the training loss decides, every epoch), keeps the best weights (when fine-tuning a checkpoint, its own
weights validated before the first epoch count as epoch 0, so fine-tuning never returns weights that validate worse
than its start), stops early after ``patience`` epochs without improvement, calls ``TrainSettings.on_epoch``
(stopping when it returns True) and writes a partial-training file every epoch so an interrupted run resumes where
it stopped (``TrainSettings.resume_from``; `partial`).

Determinism: everything random is drawn from generators re-seeded at every epoch from (seed, epoch): the sampler's
permutation (DistributedSampler(seed).set_epoch(epoch), also for a single process) and torch's global generator
(input dropout, ...). A run interrupted after epoch e and resumed therefore draws exactly what an uninterrupted run
draws, and on the same machine and thread count reaches bitwise the same weights.

The schedule (`schedule.Schedule`): ``amp`` "auto" is float16 autocast with a GradScaler on CUDA and float32 on the
CPU, "bf16" bfloat16 autocast where the device computes it natively (float32 elsewhere, `devices.native_bfloat16`),
"off" float32; weights, optimiser state and the loss stay float32. ``lr_schedule`` "cosine": the learning rate falls
from its value to 0 along half a cosine over every step of the run's ``epochs``, set before each step from the global
step, so a resumed run continues the same curve (SGDR without restarts, Loshchilov & Hutter, ICLR 2017).
``sampling`` "per_study": every study equally likely, then a sample of it, as nnU-Net draws cases before patches
(`study_balanced_weights`). ``lesion_share`` > 0: samples holding lesion voxels (the lesion mask, else the
hyperintensities of the acquired FLAIR: `datasets.lesion_candidates`) make at least that share of the draws
(`datasets.lesion_weighted`). Convolutional networks train in channels-last layout. Under torchrun with WORLD_SIZE > 1
the network is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA), each rank gets its share of every epoch
through the sampler, and only rank 0 validates, writes and reports (`distributed`). The partial-training file goes to
``partial_path`` (``TrainSettings.extra``), else to ``resume_from`` (updated in place), else to a temporary file
deleted when the run finishes.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import DistributedWeightedRandomSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .allocator import keep_freed_memory
from .datasets import lesion_weighted, study_balanced_weights
from .devices import autocast_dtype, channels_last_format, resolve_device
from .distributed import DistContext
from .partial import cpu_state, default_partial_path, load_partial, write_partial
from .schedule import Schedule, scheduled_lr

if TYPE_CHECKING:
    from ..models.base import TrainSettings

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (epoch + 1)) % 2**63


@dataclass
class _Progress:
    """What a run has reached: resumed from a partial-training file, written to it after every epoch."""

    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list = field(default_factory=list)
    previous_seconds: float = 0.0
    best_state: dict | None = None
    resumed_from: int | None = None


@dataclass
class _Run:
    """The fixed parts of one training run."""

    network: nn.Module
    model: nn.Module  # the network, or its DistributedDataParallel wrapper
    loss_fn: Callable
    optim: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_scaler: bool
    device: torch.device
    amp_dtype: torch.dtype | None
    lr: float
    schedule: Schedule
    epochs: int
    steps: int
    identity: dict
    settings: Any
    ctx: DistContext
    partial_path: Path


def _optimizer(params: list[nn.Parameter], optimizer: str, lr: float, options: dict | None) -> torch.optim.Optimizer:
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, **dict(options or {}))
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, **dict(options or {}))
    raise ValueError(f"unknown optimizer {optimizer!r}; expected adam or sgd")


def _resume(path: str, identity: dict, network: nn.Module, optim, scaler, use_scaler: bool) -> _Progress:
    state = load_partial(path, identity)
    network.load_state_dict(state["model"])
    optim.load_state_dict(state["optimizer"])
    if use_scaler and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return _Progress(epoch=int(state["epoch"]), best_metric=float(state["best_metric"]),
                     best_epoch=int(state["best_epoch"]), bad_epochs=int(state["bad_epochs"]),
                     history=list(state["history"]), previous_seconds=float(state.get("seconds", 0.0)),
                     best_state=state.get("best"), resumed_from=int(state["epoch"]))


def _sampler(dataset: Dataset, schedule: Schedule, ctx: DistContext, seed: int):
    if schedule.sampling == "per_study" or schedule.lesion_share > 0:
        weights = study_balanced_weights(dataset.index) if schedule.sampling == "per_study" else \
            torch.ones(len(dataset), dtype=torch.float64)
        if schedule.lesion_share > 0:
            if not hasattr(dataset, "lesion_rows"):
                raise ValueError("lesion_share needs a slice or patch dataset (multimodal, synnet, cae3d)")
            weights = lesion_weighted(weights, dataset.lesion_rows(), schedule.lesion_share)
        # Draws from torch's global generator, re-seeded every epoch: resume stays exact.
        return DistributedWeightedRandomSampler(dataset, weights, num_replicas=ctx.world_size, rank=ctx.rank,
                                                seed=seed)
    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)


def _train_epoch(run: _Run, loader: DataLoader, epoch: int) -> float:
    """One epoch of ``run.steps`` optimiser steps; the mean training loss (over every rank)."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    bar = tqdm(total=run.steps, desc=f"{run.identity.get('family', 'train')} epoch {epoch + 1}/{run.epochs}",
               unit="batch", disable=not (run.settings.progress and run.ctx.is_main), leave=False)
    for step, batch in enumerate(loader):
        if step >= run.steps:
            break
        for group in run.optim.param_groups:
            group["lr"] = scheduled_lr(run.lr, run.schedule.lr_schedule, epoch * run.steps + step,
                                       run.epochs * run.steps)
        run.optim.zero_grad(set_to_none=True)
        with torch.autocast(run.device.type, dtype=run.amp_dtype) if run.amp_dtype else nullcontext():
            loss = run.loss_fn(run.model, batch, run.device)
        if not torch.isfinite(loss.detach()):
            raise ValueError(f"{run.identity.get('family')}: training diverged (loss {loss.item()}) at epoch "
                             f"{epoch + 1}; lower the learning rate or choose another optimizer")
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optim)
        run.scaler.update()
        total += loss.detach().double().cpu()
        count += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    train_loss = float(total) / max(count, 1)
    if run.ctx.distributed:
        # DDP syncs buffers at the start of each forward pass, so after the last step every rank holds batch-norm
        # statistics updated by its own batch: take rank 0's, so that all ranks end every epoch identical.
        for buffer in run.network.buffers():
            torch.distributed.broadcast(buffer.data, src=0)
        reduced = torch.tensor([train_loss], dtype=torch.float64, device=run.device)
        torch.distributed.all_reduce(reduced)
        train_loss = float(reduced) / run.ctx.world_size
    return train_loss


def _validate(network: nn.Module, validate: Callable[[], dict[str, float]] | None, train_loss: float) -> dict:
    network.eval()
    with torch.no_grad():
        scores = dict(validate()) if validate is not None else {"metric": -train_loss}
    network.train()
    return scores


def _end_epoch(run: _Run, progress: _Progress, validate, epoch: int, train_loss: float, train_seconds: float,
               started: float) -> list:
    """Rank 0: validate when due, keep the best weights, log, write the partial file, ask ``on_epoch``; returns
    [improved, stopped by the callback, early stop, best metric]."""
    row = {"epoch": epoch + 1, "loss": round(train_loss, 6), "train_seconds": round(train_seconds, 1)}
    metric, improved = None, False
    if validate is None or (epoch + 1) % run.schedule.validate_every == 0 or epoch + 1 == run.epochs:
        scores = _validate(run.network, validate, train_loss)
        metric = float(scores.pop("metric"))
        improved = metric > progress.best_metric + run.schedule.min_delta or progress.best_state is None
        if improved:
            progress.best_metric, progress.best_epoch = metric, epoch + 1
        progress.bad_epochs = epoch + 1 - progress.best_epoch
        row.update(metric=round(metric, 4), **{k: round(float(v), 4) for k, v in scores.items()})
    progress.history.append(row)
    if run.settings.progress:
        logger.info("%s epoch %d/%d: %s%s", run.identity.get("family"), epoch + 1, run.epochs,
                    ", ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"), " (best so far)" if improved else "")
    if improved:
        progress.best_state = cpu_state(run.network)
    total_time = progress.previous_seconds + time.time() - started
    write_partial(run.partial_path, run.identity, run.network, run.optim, run.scaler, run.use_scaler, epoch + 1,
                  progress.best_state, progress.best_metric, progress.best_epoch, progress.bad_epochs,
                  progress.history, total_time)
    on_epoch = run.settings.on_epoch
    stop = bool(on_epoch({"epoch": epoch + 1, "total_epochs": run.epochs, "best_metric": progress.best_metric,
                          "total_time": round(total_time, 1), "loss": train_loss, "metric": metric,
                          "best_epoch": progress.best_epoch})) if on_epoch else False
    return [improved, stop, progress.bad_epochs >= run.schedule.patience, progress.best_metric]


def train_network(
    network: nn.Module,
    dataset: Dataset,
    loss_fn: Callable[[nn.Module, Any, torch.device], torch.Tensor],
    settings: TrainSettings,
    *,
    identity: dict,
    lr: float,
    optimizer: str = "adam",
    optimizer_options: dict | None = None,
    parameters: Iterable[nn.Parameter] | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
    batch_size: int | None = None,
    find_unused_parameters: bool = False,
    schedule: Schedule | None = None,
) -> dict:
    """Train ``network`` in place; on return it holds the best weights (by validation metric, higher is better).

    Args:
        network: the module to train (its current weights are the start unless resuming).
        dataset: training samples; batches are formed by the default collate.
        loss_fn: (network, batch, device) -> scalar loss. ``network`` is the DistributedDataParallel wrapper when
            distributed: call it, do not reach into its submodules, for gradients to be averaged.
        settings: epochs, batch size, device, seed, resume_from, progress, on_epoch, extra (module docstring).
        identity: {"family", "inputs", "targets", "hparams", ...}: stored in the partial file and checked on resume.
        lr, optimizer ("adam" | "sgd"), optimizer_options: the optimiser (e.g. momentum, weight_decay for SGD).
        parameters: what to optimise (default: every parameter that requires a gradient).
        validate: called on rank 0 after every ``validate_every``-th epoch and the last, network in eval mode,
            returns {"metric": higher is better, ...other numbers}; None: the negated mean training loss is the
            metric. When fine-tuning (``settings.initial_state`` given), it also scores the starting weights:
            history row 0, and ``best_epoch`` 0 when no epoch beats them.
        find_unused_parameters: passed to DistributedDataParallel (needed when some parameters may get no gradient
            in a step, e.g. encoders of dropped inputs).
        schedule: the model's training schedule (`Schedule.of` replaces its settings by those of
            ``settings.extra``).
    """
    epochs = int(settings.epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    schedule = Schedule.of(settings, schedule)
    batch_size = int(batch_size or settings.batch_size)
    seed = int(settings.seed)
    ctx = DistContext.setup(resolve_device(settings.device))
    device = ctx.device
    amp_dtype = autocast_dtype(device, schedule.amp)
    use_scaler = amp_dtype == torch.float16
    resume_from = settings.resume_from or None
    chosen_partial = settings.extra.get("partial_path") or resume_from
    partial_path = Path(chosen_partial or default_partial_path(identity, seed))

    seed_everything(seed)
    keep_freed_memory()
    network.to(device, memory_format=channels_last_format(network))
    optim = _optimizer([p for p in (parameters if parameters is not None else network.parameters())
                        if p.requires_grad], optimizer, lr, optimizer_options)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    progress = _Progress()
    if resume_from:
        progress = _resume(resume_from, identity, network, optim, scaler, use_scaler)
        if ctx.is_main and settings.progress:
            logger.info("resuming %s from epoch %d (%s)", identity.get("family"), progress.epoch, resume_from)
    if settings.initial_state is not None and validate is not None and not resume_from:
        progress.best_metric, progress.best_state, progress.history = _score_starting_weights(network, validate, ctx)
        if ctx.is_main and settings.progress:
            logger.info("%s starting weights: %s", identity.get("family"),
                        ", ".join(f"{k} {v}" for k, v in progress.history[0].items() if k != "epoch"))

    model: nn.Module = network
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters)
    sampler = _sampler(dataset, schedule, ctx, seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=schedule.workers,
                        pin_memory=device.type == "cuda")
    steps = len(loader) if schedule.max_steps_per_epoch is None else min(len(loader), schedule.max_steps_per_epoch)
    run = _Run(network, model, loss_fn, optim, scaler, use_scaler, device, amp_dtype, lr, schedule, epochs, steps,
               identity, settings, ctx, partial_path)
    if ctx.is_main and settings.progress:
        logger.info("%s: %d samples, %d steps of %d per epoch on %s x %d; partial-training file %s",
                    identity.get("family"), len(dataset), steps, batch_size, device, ctx.world_size, partial_path)
    started = time.time()
    epoch_times: list[float] = []
    stopped = "max_epochs" if progress.epoch < epochs else "already_done"
    for epoch in range(progress.epoch, epochs):
        epoch_started = time.time()
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(seed, epoch) + ctx.rank)
        network.train()
        train_loss = _train_epoch(run, loader, epoch)
        epoch_times.append(time.time() - epoch_started)
        decisions = [False, False, False, progress.best_metric]
        if ctx.is_main:
            decisions = _end_epoch(run, progress, validate, epoch, train_loss, epoch_times[-1], started)
        improved, stop, early, progress.best_metric = ctx.broadcast(decisions)
        if improved and not ctx.is_main:
            progress.best_state = cpu_state(network)  # DDP keeps every rank's weights identical to rank 0's
        if stop or early:
            stopped = "callback" if stop else "early_stopping"
            break

    if progress.best_state is not None:
        network.load_state_dict(progress.best_state)
    # The wrapper's reducer holds the process group: released at this function's exit, after the other ranks have
    # left, the group's last reference takes gloo's teardown with it and can hang. Release it while all ranks are here.
    del model, run
    # every rank returns rank 0's account of the run (only rank 0 validated)
    history, best_metric, best_epoch, stopped = ctx.broadcast(
        [progress.history, progress.best_metric, progress.best_epoch, stopped])
    ctx.barrier()
    world = ctx.world_size
    ctx.close()
    if ctx.is_main and stopped in ("max_epochs", "early_stopping") and not chosen_partial and partial_path.exists():
        partial_path.unlink()  # finished: a default temporary partial file has no further use
    return {
        "epochs": (history[-1]["epoch"] if history else progress.epoch),
        "best_epoch": best_epoch,
        "best_metric": None if not math.isfinite(best_metric) else round(best_metric, 4),
        "stopped": stopped,
        "history": history,
        "seconds": round(progress.previous_seconds + time.time() - started, 1),
        "seconds_per_epoch": round(float(np.mean(epoch_times)), 1) if epoch_times else None,
        "steps_per_epoch": steps,
        "batch_size": batch_size,
        "samples_per_epoch": len(dataset),
        "learning_rate": lr,
        "lr_schedule": schedule.lr_schedule,
        "sampling": schedule.sampling,
        "lesion_share": schedule.lesion_share,
        "optimizer": optimizer,
        "device": str(device),
        "mixed_precision": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        "world_size": world,
        "resumed_from_epoch": progress.resumed_from,
        "partial": str(partial_path) if (stopped == "callback" or chosen_partial) else None,
    }


def _score_starting_weights(network: nn.Module, validate: Callable[[], dict[str, float]],
                            ctx: DistContext) -> tuple[float, dict, list]:
    """Fine-tuning: validate the checkpoint's weights before the first epoch and make them the best so far (epoch 0),
    so that a run in which every epoch validates worse returns the weights it started from."""
    scores = None
    if ctx.is_main:
        network.eval()
        with torch.no_grad():
            scores = dict(validate())
        network.train()
    scores = ctx.broadcast([scores])[0]
    metric = float(scores.pop("metric"))
    row = {"epoch": 0, "metric": round(metric, 4), **{k: round(float(v), 4) for k, v in scores.items()}}
    return metric, cpu_state(network), [row]
