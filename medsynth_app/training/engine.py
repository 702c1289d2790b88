"""The training loop shared by the deep families.

`train_network` runs epochs over a Dataset with a progress bar, validates after every ``validate_every``-th epoch
and the last (the family's ``validate`` callable: EVALUATION.md metrics on whole validation subjects; without
validation subjects the training loss decides, every epoch), keeps the best weights (when fine-tuning a checkpoint,
its own weights validated before the first epoch count as epoch 0, so fine-tuning never returns weights that
validate worse than its start), stops early after ``patience`` epochs without improvement, calls
``TrainSettings.on_epoch`` (stopping when it returns True) and writes a partial-training file every epoch so an
interrupted run resumes where it stopped (``TrainSettings.resume_from``).

Determinism: everything random is drawn from generators re-seeded at every epoch from (seed, epoch): the sampler's
permutation (DistributedSampler(seed).set_epoch(epoch), also for a single process) and torch's global generator
(input dropout, ...). A run interrupted after epoch e and resumed therefore draws exactly what an uninterrupted run
draws, and on the same machine and thread count reaches bitwise the same weights.

Devices: "auto" picks CUDA when available, else the CPU. Mixed precision, setting ``amp``: "auto" (default) float16
autocast with a GradScaler on CUDA and full float32 on the CPU; "bf16" bfloat16 autocast on either (no scaler needed:
bfloat16 has float32's range), which halves a SynNet MISO training step on a CPU with AVX-512 BF16 (measured 5.3 s ->
2.7 s for 8 crops of 128x128 on one thread), and float32 where the device lacks native bfloat16 (`native_bfloat16`;
the run's summary says which it used); "off" float32 everywhere. Weights, optimiser state and the loss stay
float32; validation and inference run in bfloat16 after bfloat16 training where the device computes it natively,
else in float32 (`inference`). Convolutional networks train in channels-last layout (about 15 %
faster on a 2-core AMD EPYC). Under torchrun with WORLD_SIZE > 1 the network is wrapped
in DistributedDataParallel (gloo on CPU, nccl on CUDA), each rank gets its share of every epoch through the
DistributedSampler, and only rank 0 validates, writes and reports (see `distributed`).

Settings read from ``TrainSettings.extra`` (the family's hparams may set the same): ``patience`` (10: epochs since
the best, checked when validating), ``min_delta`` (0), ``validate_every`` (1), ``max_steps_per_epoch`` (None: every
batch), ``partial_path``, ``workers`` (DataLoader worker processes, 0), ``amp`` ("auto"), ``lr_schedule``
("constant"; "cosine": the learning rate falls from its value to 0 along half a cosine over every step of the run's
``epochs``, set before each step from the global step, so a resumed run continues the same curve when given the same
``epochs``; cosine annealing without restarts, Loshchilov & Hutter, SGDR, ICLR 2017), ``sampling`` ("uniform": every
sample of the dataset equally likely; "per_study": every study equally likely, then a sample of it, as nnU-Net draws
cases before patches: a 48-slice clinical scan then weighs as much as a 155-slice research one, and training on
three slice axes does not drown the studies with one well-sampled plane; drawn with replacement,
`study_balanced_weights`). With a constant rate the weights keep jumping between epochs and the epoch early stopping
keeps is partly chance; the decay lets the last epochs settle. ``max_steps_per_epoch``, ``amp`` and
``validate_every`` set the schedule and arithmetic, not the model: `resumable_hparams` leaves them out of the
identity a resumed run must match. The partial-training file goes to ``partial_path``, else to ``resume_from``
(updated in place), else to <tmp>/medsynth_partial/<family>_<task>_seed<seed>.pt (deleted when that run finishes).
The CLI sets them with ``train --partial`` and ``--resume``.
"""
from __future__ import annotations

import copy
import logging
import math
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import DistributedWeightedRandomSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from ..atomic import atomic_write
from .allocator import keep_freed_memory
from .common import module_device, prefixed_state, unprefixed_state
from .datasets import study_balanced_weights
from .distributed import DistContext
from .inference import inference_network

if TYPE_CHECKING:
    from ..models.base import TrainSettings

logger = logging.getLogger(__name__)

PARTIAL_FORMAT = "medsynth-partial/1"


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto" (or None/""): CUDA when available, else CPU; otherwise the named device, checked."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (epoch + 1)) % 2**63


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def default_partial_path(identity: dict, seed: int) -> Path:
    name = f"{identity.get('family', 'model')}_{'+'.join(identity.get('inputs', []))}_to_" \
           f"{'+'.join(identity.get('targets', []))}_seed{seed}"
    return Path(tempfile.gettempdir()) / "medsynth_partial" / (re.sub(r"[^A-Za-z0-9_+.-]", "_", name) + ".pt")


def load_partial(path: str | Path, identity: dict) -> dict:
    """A partial-training file written by `train_network`, checked against the model it is meant to continue."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such partial-training file to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged file: torch raises many types
        raise ValueError(f"{path}: not a readable partial-training file ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != PARTIAL_FORMAT:
        raise ValueError(f"{path}: not a MedSynth partial-training file")
    for key, value in identity.items():
        if state["identity"].get(key) != value:
            raise ValueError(f"{path}: was written for {key} {state['identity'].get(key)!r}, not {value!r}")
    return state


AMP_MODES = ("auto", "bf16", "off")
LR_SCHEDULES = ("constant", "cosine")
SAMPLINGS = ("uniform", "per_study")
SCHEDULE_HPARAMS = ("max_steps_per_epoch", "amp", "validate_every")


def amp_mode(amp) -> str:
    """The ``amp`` setting checked: one of AMP_MODES; booleans stand for "auto" (True) and "off" (False)."""
    mode = ("auto" if amp else "off") if isinstance(amp, bool) else str(amp)
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, not {amp!r}")
    return mode


def lr_schedule_name(schedule) -> str:
    """The ``lr_schedule`` setting checked: one of LR_SCHEDULES."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {schedule!r}")
    return str(schedule)


def sampling_name(sampling) -> str:
    """The ``sampling`` setting checked: one of SAMPLINGS."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
    return str(sampling)


def scheduled_lr(lr: float, schedule: str, step: int, total_steps: int) -> float:
    """The learning rate of global ``step`` (0-based) of a run of ``total_steps`` under ``schedule``. The closed form
    of torch's CosineAnnealingLR (eta_min 0), computed from the step rather than chained from the previous rate, so
    that a resumed run needs no scheduler state."""
    if schedule == "constant":
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU with bf16 support, a CPU with AVX-512 BF16 or
    AMX. Elsewhere torch emulates it, several times slower than float32 (a multimodal training step, 16 crops of
    96x96 through two encoders and a decoder, on one core of an AVX2-only AMD EPYC: 11 s in float32, 76 s under
    bfloat16 autocast)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_dtype(device: torch.device, amp) -> torch.dtype | None:
    """The autocast dtype of the ``amp`` setting (module docstring) on ``device``; None for float32. "bf16" falls
    back to float32, with a warning, on a device without `native_bfloat16`."""
    mode = amp_mode(amp)
    if mode == "bf16":
        if native_bfloat16(device):
            return torch.bfloat16
        logger.warning("amp bf16: %s has no native bfloat16, training in float32 instead", device)
        return None
    return torch.float16 if mode == "auto" and device.type == "cuda" else None


def inference_dtype(device: torch.device, amp) -> torch.dtype | None:
    """The autocast dtype a network trained with the ``amp`` setting predicts under on ``device`` (`inference`
    module docstring); None for float32."""
    return torch.bfloat16 if amp_mode(amp) == "bf16" and native_bfloat16(device) else None


def channels_last_format(network: nn.Module) -> torch.memory_format:
    """channels_last for 2-D convolutional networks, channels_last_3d for 3-D ones, else the default layout."""
    ranks = {p.dim() for p in network.parameters()}
    return (torch.channels_last_3d if 5 in ranks else torch.channels_last if 4 in ranks
            else torch.preserve_format)


def resumable_hparams(hparams: dict, finishing: Sequence[str] = ()) -> dict:
    """The hyperparameters a resumed run must share with the interrupted one: SCHEDULE_HPARAMS and the model's
    ``finishing`` ones (`SynthesisModel.finishing_hparams`, which act after the training) left out."""
    return {k: v for k, v in hparams.items() if k not in SCHEDULE_HPARAMS and k not in finishing}


def _setting(settings: TrainSettings, hparams: dict, key: str, default):
    if key in settings.extra and settings.extra[key] is not None:
        return settings.extra[key]
    if hparams.get(key) is not None:
        return hparams[key]
    return default


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
    hparams: dict | None = None,
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
        validate: called on rank 0 after every ``validate_every``-th epoch and the last, network in eval mode, returns {"metric": higher is
            better, ...other numbers}; None: the negated mean training loss is the metric. When fine-tuning
            (``settings.initial_state`` given), it also scores the starting weights: history row 0, and
            ``best_epoch`` 0 when no epoch beats them.
        find_unused_parameters: passed to DistributedDataParallel (needed when some parameters may get no gradient
            in a step, e.g. encoders of dropped inputs).
        hparams: the family's hyperparameters, searched for patience / min_delta / validate_every /
            max_steps_per_epoch / amp / lr_schedule / sampling after ``settings.extra``.
    """
    hparams = hparams or {}
    epochs = int(settings.epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    patience = int(_setting(settings, hparams, "patience", 10))
    min_delta = float(_setting(settings, hparams, "min_delta", 0.0))
    max_steps = _setting(settings, hparams, "max_steps_per_epoch", None)
    validate_every = int(_setting(settings, hparams, "validate_every", 1))
    if validate_every < 1:
        raise ValueError(f"validate_every must be >= 1, got {validate_every}")
    batch_size = int(batch_size or settings.batch_size)
    seed = int(settings.seed)
    device = resolve_device(settings.device)
    ctx = DistContext.setup(device)
    device = ctx.device
    amp_dtype = autocast_dtype(device, _setting(settings, hparams, "amp", "auto"))
    schedule = lr_schedule_name(_setting(settings, hparams, "lr_schedule", "constant"))
    sampling = sampling_name(_setting(settings, hparams, "sampling", "uniform"))
    use_scaler = amp_dtype == torch.float16
    resume_from = settings.resume_from or None
    chosen_partial = settings.extra.get("partial_path") or resume_from
    partial_path = Path(chosen_partial or default_partial_path(identity, seed))
    user_partial = bool(chosen_partial)

    seed_everything(seed)
    keep_freed_memory()
    network.to(device, memory_format=channels_last_format(network))
    params = [p for p in (parameters if parameters is not None else network.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    options = dict(optimizer_options or {})
    if optimizer == "adam":
        optim = torch.optim.Adam(params, lr=lr, **options)
    elif optimizer == "sgd":
        optim = torch.optim.SGD(params, lr=lr, **options)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected adam or sgd")
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    start_epoch, best_metric, best_epoch, bad_epochs, history, previous_seconds = 0, -math.inf, 0, 0, [], 0.0
    best_state = None
    resumed_from = None
    if resume_from:
        state = load_partial(resume_from, identity)
        network.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_metric, best_epoch = int(state["epoch"]), float(state["best_metric"]), int(state["best_epoch"])
        bad_epochs, history = int(state["bad_epochs"]), list(state["history"])
        previous_seconds = float(state.get("seconds", 0.0))
        best_state = state.get("best")
        resumed_from = start_epoch
        if ctx.is_main and settings.progress:
            logger.info("resuming %s from epoch %d (%s)", identity.get("family"), start_epoch, resume_from)

    if settings.initial_state is not None and validate is not None and not resume_from:
        best_metric, best_state, history = _score_starting_weights(network, validate, ctx)
        if ctx.is_main and settings.progress:
            logger.info("%s starting weights: %s", identity.get("family"),
                        ", ".join(f"{k} {v}" for k, v in history[0].items() if k != "epoch"))

    model: nn.Module = network
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters)
    if sampling == "per_study":
        # Draws from torch's global generator, re-seeded every epoch below: resume stays exact.
        sampler = DistributedWeightedRandomSampler(dataset, study_balanced_weights(dataset.index),
                                                   num_replicas=ctx.world_size, rank=ctx.rank, seed=seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=int(settings.extra.get("workers", 0)),
                        pin_memory=device.type == "cuda")
    steps = len(loader) if max_steps is None else min(len(loader), int(max_steps))
    if ctx.is_main and settings.progress:
        logger.info("%s: %d samples, %d steps of %d per epoch on %s x %d; partial-training file %s",
                    identity.get("family"), len(dataset), steps, batch_size, device, ctx.world_size, partial_path)
    started = time.time()
    epoch_times: list[float] = []
    stopped = "max_epochs" if start_epoch < epochs else "already_done"
    epoch = start_epoch
    for epoch in range(start_epoch, epochs):
        epoch_started = time.time()
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(seed, epoch) + ctx.rank)
        network.train()
        total, count = torch.zeros((), dtype=torch.float64), 0
        bar = tqdm(total=steps, desc=f"{identity.get('family', 'train')} epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not (settings.progress and ctx.is_main), leave=False)
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            for group in optim.param_groups:
                group["lr"] = scheduled_lr(lr, schedule, epoch * steps + step, epochs * steps)
            optim.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                loss = loss_fn(model, batch, device)
            if not torch.isfinite(loss.detach()):
                raise ValueError(f"{identity.get('family')}: training diverged (loss {loss.item()}) at epoch "
                                 f"{epoch + 1}; lower the learning rate or choose another optimizer")
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
            total += loss.detach().double().cpu()
            count += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        train_loss = float(total) / max(count, 1)
        if ctx.distributed:
            # DDP syncs buffers at the start of each forward pass, so after the last step every rank holds batch-norm
            # statistics updated by its own batch: take rank 0's, so that all ranks end every epoch identical.
            for buffer in network.buffers():
                torch.distributed.broadcast(buffer.data, src=0)
            reduced = torch.tensor([train_loss], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(reduced)
            train_loss = float(reduced) / ctx.world_size
        train_seconds = time.time() - epoch_started
        epoch_times.append(train_seconds)

        decisions = [False, False, False, best_metric]  # improved, stop by callback, early stop, best metric
        if ctx.is_main:
            row = {"epoch": epoch + 1, "loss": round(train_loss, 6), "train_seconds": round(train_seconds, 1)}
            metric, improved = None, False
            if validate is None or (epoch + 1) % validate_every == 0 or epoch + 1 == epochs:
                network.eval()
                with torch.no_grad():
                    scores = dict(validate()) if validate is not None else {"metric": -train_loss}
                network.train()
                metric = float(scores.pop("metric"))
                improved = metric > best_metric + min_delta or best_state is None
                if improved:
                    best_metric, best_epoch = metric, epoch + 1
                bad_epochs = epoch + 1 - best_epoch
                row.update(metric=round(metric, 4), **{k: round(float(v), 4) for k, v in scores.items()})
            history.append(row)
            if settings.progress:
                logger.info("%s epoch %d/%d: %s%s", identity.get("family"), epoch + 1, epochs,
                            ", ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"),
                            " (best so far)" if improved else "")
            if improved:
                best_state = _cpu_state(network)
            total_time = previous_seconds + time.time() - started
            _write_partial(partial_path, identity, network, optim, scaler, use_scaler, epoch + 1, best_state,
                           best_metric, best_epoch, bad_epochs, history, total_time)
            stop = bool(settings.on_epoch({"epoch": epoch + 1, "total_epochs": epochs, "best_metric": best_metric,
                                           "total_time": round(total_time, 1), "loss": train_loss, "metric": metric,
                                           "best_epoch": best_epoch})) if settings.on_epoch else False
            decisions = [improved, stop, bad_epochs >= patience, best_metric]
        improved, stop, early, best_metric = ctx.broadcast(decisions)
        if improved and not ctx.is_main:
            best_state = _cpu_state(network)  # DDP keeps every rank's weights identical to rank 0's
        if stop or early:
            stopped = "callback" if stop else "early_stopping"
            break

    if best_state is not None:
        network.load_state_dict(best_state)
    # The wrapper's reducer holds the process group: released at this function's exit, after the other ranks have
    # left, the group's last reference takes gloo's teardown with it and can hang. Release it while all ranks are here.
    del model
    # every rank returns rank 0's account of the run (only rank 0 validated)
    history, best_metric, best_epoch, stopped = ctx.broadcast([history, best_metric, best_epoch, stopped])
    ctx.barrier()
    world = ctx.world_size
    ctx.close()
    if ctx.is_main and stopped in ("max_epochs", "early_stopping") and not user_partial and partial_path.exists():
        partial_path.unlink()  # finished: a default temporary partial file has no further use
    return {
        "epochs": (history[-1]["epoch"] if history else start_epoch),
        "best_epoch": best_epoch,
        "best_metric": None if not math.isfinite(best_metric) else round(best_metric, 4),
        "stopped": stopped,
        "history": history,
        "seconds": round(previous_seconds + time.time() - started, 1),
        "seconds_per_epoch": round(float(np.mean(epoch_times)), 1) if epoch_times else None,
        "steps_per_epoch": steps,
        "batch_size": batch_size,
        "samples_per_epoch": len(dataset),
        "learning_rate": lr,
        "lr_schedule": schedule,
        "sampling": sampling,
        "optimizer": optimizer,
        "device": str(device),
        "mixed_precision": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        "world_size": world,
        "resumed_from_epoch": resumed_from,
        "partial": str(partial_path) if (stopped == "callback" or user_partial) else None,
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
    return metric, _cpu_state(network), [row]


def _write_partial(path: Path, identity: dict, network: nn.Module, optim, scaler, use_scaler: bool, epoch: int,
                   best_state, best_metric: float, best_epoch: int, bad_epochs: int, history: list,
                   seconds: float) -> None:
    data = {
        "format": PARTIAL_FORMAT,
        "identity": copy.deepcopy(identity),
        "epoch": epoch,
        "model": _cpu_state(network),
        "optimizer": optim.state_dict(),
        "scaler": scaler.state_dict() if use_scaler else None,
        "best": best_state,
        "best_metric": best_metric,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
        "history": history,
        "seconds": seconds,
    }
    atomic_write(path, lambda tmp: torch.save(data, tmp))


def place_for_inference(net: torch.nn.Module, wanted: str | None) -> torch.device:
    """Move a network that sits on the CPU to the ``wanted`` device ("auto", "cuda", ...) once, in the layout it
    trained in (channels-last: a loaded network then predicts exactly what the trained one did); returns its device."""
    device = module_device(net)
    if device.type == "cpu" and wanted is not None:
        target = resolve_device(wanted)
        net.to(target, memory_format=channels_last_format(net))
        device = target
    return device


class NetworkWeights:
    """Mixin for families holding one torch network ``self.net`` (built by ``self._build()``) and a wanted inference
    device ``self.device``: weights in and out of checkpoints, and placing the network once before inference."""

    fine_tunes = True

    def state_dict(self) -> dict:
        return prefixed_state(self.net)

    def _initial_network(self, settings: TrainSettings) -> nn.Module:
        """A fresh network, holding ``settings.initial_state`` when fine-tuning a checkpoint."""
        net = self._build()
        if settings.initial_state is not None:
            try:
                net.load_state_dict(unprefixed_state(settings.initial_state))
            except RuntimeError as err:
                first = [line.strip() for line in str(err).splitlines() if line.strip()][1:2]
                raise ValueError(f"{self.family}: the starting weights do not fit this network (an architecture "
                                 f"hyperparameter changed?): {' '.join(first) or err}") from None
        return net

    def load_state_dict(self, state: dict) -> None:
        self.net = self._build()
        self.net.load_state_dict(unprefixed_state(state))
        self.device = "auto"

    def _for_inference(self) -> tuple[nn.Module, torch.device, torch.dtype | None]:
        """(`inference_network` copy of ``self.net``, its device, the autocast dtype to predict under); the network
        is placed on the wanted device once."""
        device = place_for_inference(self.net, self.device)
        self.device = None  # placed once
        return inference_network(self.net), device, inference_dtype(device, self.hparams.get("amp", "auto"))
