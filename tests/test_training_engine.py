"""The shared training engine: datasets, slice/tile inference, validation-driven early stopping, the on_epoch
callback, resume after interruption (bitwise equal to an uninterrupted run), devices, and DistributedDataParallel
with two gloo processes."""
from __future__ import annotations

import dataclasses
import faulthandler
import gc
import itertools
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from medsynth_app.models import TrainSettings, create
from medsynth_app.pipeline import _record_run, prepare_study, seconds_before_resumption
from medsynth_app.studies import find_studies
from medsynth_app.training import devices, engine
from medsynth_app.training.partial import default_partial_path
from medsynth_app.training.schedule import Schedule, scheduled_lr
from medsynth_app.training import (PatchDataset, SliceDataset, brain_slices, load_partial, predict_slices,
                                   resolve_device)
from medsynth_app.training.datasets import sampled_planes

CONTRASTS = ["T1", "T2", "FLAIR"]
SYNNET = {"features": 4, "depth": 2, "loss": "l2", "optimizer": "sgd", "max_steps_per_epoch": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _shrink(subject, size):
    centre = np.round(np.argwhere(subject.mask).mean(axis=0)).astype(int)
    box = tuple(slice(int(np.clip(c - w // 2, 0, max(h - w, 0))), int(np.clip(c - w // 2, 0, max(h - w, 0))) + w)
                for c, w, h in zip(centre, size, subject.shape))
    return dataclasses.replace(subject, images={k: np.ascontiguousarray(v[box]) for k, v in subject.images.items()},
                               mask=np.ascontiguousarray(subject.mask[box]),
                               lesion=None if subject.lesion is None else np.ascontiguousarray(subject.lesion[box]))


@pytest.fixture(scope="module")
def subjects(mni_crops):
    """Three real MS subjects (mni), prepared and cut to 32x32x16 voxels around the brain."""
    return [_shrink(prepare_study(s, CONTRASTS, "FLAIR", CONTRASTS), (32, 32, 16)) for s in find_studies(mni_crops)]


def _settings(**kw):
    return TrainSettings(**{"epochs": 1, "batch_size": 4, "progress": False, "seed": 3, **kw})


# --- datasets and inference ---------------------------------------------------------------------------------------


def test_slice_dataset(subjects):
    kept = brain_slices(subjects[0].mask, 2, 0.5)
    area = subjects[0].mask.sum(axis=(0, 1))
    assert kept == [k for k in range(16) if area[k] >= 0.5 * area.max()]
    dataset = SliceDataset(subjects[:2], ["T1", "FLAIR", "lesion"], axes=(2, 0), min_brain=0.0)
    assert dataset.size == (32, 32)
    assert len(dataset) == sum(len(brain_slices(s.mask, a, 0.0)) for s in subjects[:2] for a in (2, 0))
    n, axis, k = dataset.index[0]
    sample = dataset[0]
    assert sample.shape == (3, 32, 32) and sample.dtype == torch.float32
    np.testing.assert_array_equal(sample[1].numpy(), subjects[n].images["FLAIR"][:, :, k])
    axial_0 = next(i for i, (n_, a, _) in enumerate(dataset.index) if a == 0)
    assert dataset[axial_0].shape == (3, 32, 32)  # (32, 16) sagittal slices padded to the common size


def test_slices_come_only_from_the_well_sampled_planes_of_each_subject(subjects):
    assert sampled_planes((1.0, 1.0, 1.0), (0, 1, 2)) == [0, 1, 2]
    assert sampled_planes((0.72, 0.72, 4.0), (0, 1, 2)) == [2]  # thick axial slices: axial only
    assert sampled_planes((0.72, 0.72, 4.0), (0, 1)) == [0]  # none qualifies: the best-sampled of those asked
    thick = dataclasses.replace(subjects[0], spacing=(1.0, 1.0, 3.0))
    dataset = SliceDataset([thick, subjects[1]], ["T1"], axes=(0, 1, 2), min_brain=0.0)
    assert {a for n, a, _ in dataset.index if n == 0} == {2}
    assert {a for n, a, _ in dataset.index if n == 1} == {0, 1, 2}


def test_slice_crops_are_centred_on_brain_and_follow_the_seed(subjects):
    dataset = SliceDataset(subjects[:2], ["T1", "FLAIR"], min_brain=0.0, crop=16)
    assert dataset.size == (16, 16) and len(dataset) == len(SliceDataset(subjects[:2], ["T1"], min_brain=0.0))
    n, _, k = dataset.index[5]
    image = np.pad(subjects[n].images["T1"][:, :, k], 8)
    brain = np.pad(subjects[n].mask[:, :, k], 8)
    torch.manual_seed(0)
    crops = [dataset[5] for _ in range(20)]
    for crop in crops:
        assert crop.shape == (2, 16, 16)
        # the crop is the window of the zero-padded slice whose centre pixel is in the brain
        starts = [(i, j) for i in range(image.shape[0] - 15) for j in range(image.shape[1] - 15)
                  if brain[i + 8, j + 8] and np.array_equal(image[i:i + 16, j:j + 16], crop[0].numpy())]
        assert starts, "crop not centred on a brain pixel"
    assert len({c.numpy().tobytes() for c in crops}) > 1
    torch.manual_seed(0)
    assert all(torch.equal(dataset[5], c) for c in crops)
    with pytest.raises(ValueError, match="multiple of 16"):
        SliceDataset(subjects[:1], ["T1"], crop=24)


def test_patch_dataset_alignment(subjects):
    """Input patches are output patches grown by the margin, read from the zero-padded volume; centres in the
    brain mask."""
    dataset = PatchDataset(subjects[:1], ["T1"], ["T1"], output_size=16, margin=11, step=8)
    assert len(dataset) > 0
    for item in range(len(dataset)):
        x, y = dataset[item]
        assert x.shape == (1, 38, 38, 38) and y.shape == (1, 16, 16, 16)
        torch.testing.assert_close(x[:, 11:27, 11:27, 11:27], y)
        _, i, j, k = dataset.index[item]
        centre = tuple(min(a + 8, s - 1) for a, s in zip((i, j, k), subjects[0].shape))
        assert subjects[0].mask[centre]


def test_patch_dataset_jitter_moves_patches_by_seeded_offsets_within_the_brain(subjects):
    """With jitter, each draw is a patch moved by at most ``jitter`` voxels per axis from its grid position, centred
    in the brain, with the input still its output grown by the margin; the same seed draws the same patches."""
    subject = subjects[0]
    moving = PatchDataset([subject], ["T1"], ["T1"], output_size=16, margin=11, step=8, jitter=3)
    padded = np.pad(subject.images["T1"], [(0, 16)] * 3)
    torch.manual_seed(0)
    draws = [(item, *moving[item]) for item in range(len(moving))]
    offsets = set()
    for item, x, y in draws:
        torch.testing.assert_close(x[:, 11:27, 11:27, 11:27], y)
        _, *grid = moving.index[item]
        found = [o for o in itertools.product(range(-3, 4), repeat=3)
                 if min(g + d for g, d in zip(grid, o)) >= 0 and np.array_equal(
                     padded[tuple(slice(g + d, g + d + 16) for g, d in zip(grid, o))], y[0].numpy())]
        assert found, f"patch {item} is not within 3 voxels of its grid position"
        offsets.add(found[0])
        start = [g + d for g, d in zip(grid, found[0])]
        assert subject.mask[tuple(min(a + 8, n - 1) for a, n in zip(start, subject.shape))]
    assert len(offsets) > len(draws) // 2 and any(sum(o) % 2 for o in offsets)
    torch.manual_seed(0)
    assert all(torch.equal(moving[item][1], y) for item, _, y in draws)
    with pytest.raises(ValueError, match="jitter"):
        PatchDataset([subject], ["T1"], ["T1"], output_size=16, margin=11, jitter=-1)


def test_patch_dataset_input_noise_perturbs_brain_inputs_only_with_seeded_levels(subjects):
    """With input noise, each input patch is the clean one plus Gaussian noise on its non-zero voxels, at a level of
    at most ``input_noise`` drawn per patch; background and targets stay exact; the same seed draws the same noise."""
    subject = subjects[0]
    clean = PatchDataset([subject], ["T1", "T2"], ["FLAIR"], output_size=16, margin=11, step=8)
    noisy = PatchDataset([subject], ["T1", "T2"], ["FLAIR"], output_size=16, margin=11, step=8, input_noise=0.2)
    torch.manual_seed(0)
    draws = [noisy[item] for item in range(len(noisy))]
    levels = []
    for item, (x, y) in enumerate(draws):
        x0, y0 = clean[item]
        assert torch.equal(y, y0) and torch.equal(x[x0 == 0], x0[x0 == 0])
        for channel in range(2):
            brain = x0[channel] != 0
            if brain.sum() > 1000:
                levels.append(float((x[channel] - x0[channel])[brain].std()))
    assert max(levels) <= 0.2 * 1.05 and min(levels) < 0.05 and np.median(levels) > 0.05
    torch.manual_seed(0)
    assert all(torch.equal(noisy[item][0], x) for item, (x, _) in enumerate(draws))
    with pytest.raises(ValueError, match="input noise"):
        PatchDataset([subject], ["T1"], ["T1"], output_size=16, margin=11, input_noise=-0.1)


def test_predict_slices_identity_along_every_axis():
    volume = np.random.default_rng(1).random((20, 28, 12)).astype(np.float32)  # not multiples of 16: padded
    for axis in (0, 1, 2):
        out = predict_slices(lambda x: x[:, :1] * 2, [volume, volume + 1], axis, torch.device("cpu"), batch_size=5)
        np.testing.assert_array_equal(out[0], volume * 2)


ALLOCATION_PROBE = """
import ctypes, sys, torch
from medsynth_app.training.allocator import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = mallinfo2().hblkhd
x = torch.empty(64 * 2**20, dtype=torch.uint8)
print(mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_tensors_come_from_the_heap_once_freed_memory_is_kept():
    def mapped(mode):
        run = subprocess.run([sys.executable, "-c", ALLOCATION_PROBE, mode], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        return int(run.stdout.split()[-1])

    assert mapped("default") >= 64 * 2**20  # glibc maps a block this large on its own and unmaps it when freed
    assert mapped("keep") == 0


def test_devices():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device"):
        resolve_device("gpu0")


# --- the loop -----------------------------------------------------------------------------------------------------


def test_on_epoch_callback_and_early_stopping(subjects, tmp_path):
    seen = []
    model = create("synnet", ["T1"], ["T2"], **SYNNET, patience=1, min_delta=1e9)  # nothing counts as improving
    summary = model.fit(subjects[:2], subjects[2:], _settings(epochs=5, on_epoch=lambda info: seen.append(info),
                                                              extra={"partial_path": str(tmp_path / "p.pt")}))
    assert summary["stopped"] == "early_stopping" and summary["epochs"] == 2 and summary["best_epoch"] == 1
    assert [s["epoch"] for s in seen] == [1, 2]
    assert {"epoch", "total_epochs", "best_metric", "total_time"} <= set(seen[0]) and seen[0]["total_epochs"] == 5
    assert seen[0]["best_metric"] == pytest.approx(summary["history"][0]["val_psnr"], abs=1e-3)
    # the model holds the best (epoch 1) weights, not the last ones
    partial = load_partial(tmp_path / "p.pt", {"family": "synnet"})
    assert partial["epoch"] == 2 and partial["best_epoch"] == 1
    best = {k[4:]: v for k, v in model.state_dict().items()}
    assert all(torch.equal(best[k], v) for k, v in partial["best"].items())
    assert not all(torch.equal(best[k], v) for k, v in partial["model"].items())


def test_validate_every_validates_every_nth_and_the_last_epoch_and_keeps_the_best_of_those(subjects, tmp_path):
    """validate_every=2 over 5 epochs validates after epochs 2, 4 and 5 only; the others log their training loss; the
    weights returned are the best validated epoch's; patience counts epochs since that best."""
    model = create("synnet", ["T1"], ["T2"], **SYNNET, validate_every=2)
    summary = model.fit(subjects[:2], subjects[2:], _settings(epochs=5,
                                                              extra={"partial_path": str(tmp_path / "p.pt")}))
    assert [("val_psnr" in r, "loss" in r) for r in summary["history"]] == [(False, True), (True, True)] * 2 + \
        [(True, True)]
    validated = {r["epoch"]: r["metric"] for r in summary["history"] if "metric" in r}
    assert summary["best_epoch"] == max(validated, key=validated.get) and summary["epochs"] == 5
    partial = load_partial(tmp_path / "p.pt", {"family": "synnet"})
    best = {k[4:]: v for k, v in model.state_dict().items()}
    assert all(torch.equal(best[k], v) for k, v in partial["best"].items())
    assert partial["bad_epochs"] == 5 - summary["best_epoch"]
    # patience 1 with nothing improving: the first validation (epoch 2) is best, the second (epoch 4) stops the run
    strict = create("synnet", ["T1"], ["T2"], **SYNNET, validate_every=2, patience=1, min_delta=1e9)
    stopped = strict.fit(subjects[:2], subjects[2:], _settings(epochs=6))
    assert (stopped["stopped"], stopped["epochs"], stopped["best_epoch"]) == ("early_stopping", 4, 2)
    with pytest.raises(ValueError, match="validate_every"):
        create("synnet", ["T1"], ["T2"], **SYNNET, validate_every=0).fit(subjects[:2], subjects[2:], _settings())


def test_fine_tuning_keeps_the_starting_weights_when_no_epoch_validates_better(subjects):
    """Fine-tuning validates the checkpoint's weights first (history row 0, the same scores the run that made them
    reported); when no epoch beats them (min_delta makes every epoch fail) it returns them unchanged, where a run
    from scratch under the same rule keeps its first epoch."""
    base = create("synnet", ["T1"], ["T2"], **SYNNET)
    base_summary = base.fit(subjects[:2], subjects[2:], _settings())
    start = base.state_dict()
    strict = {**SYNNET, "patience": 5, "min_delta": 1e9}
    tuned = create("synnet", ["T1"], ["T2"], **strict)
    summary = tuned.fit(subjects[:2], subjects[2:], _settings(epochs=2, initial_state=start))
    assert [r["epoch"] for r in summary["history"]] == [0, 1, 2] and summary["best_epoch"] == 0
    assert summary["history"][0]["val_psnr"] == pytest.approx(base_summary["history"][0]["val_psnr"], abs=1e-4)
    assert all(torch.equal(v, start[k]) for k, v in tuned.state_dict().items())
    scratch = create("synnet", ["T1"], ["T2"], **strict).fit(subjects[:2], subjects[2:], _settings(epochs=2))
    assert [r["epoch"] for r in scratch["history"]] == [1, 2] and scratch["best_epoch"] == 1


@pytest.mark.parametrize("sampling", ["uniform", "per_study"])
def test_resume_reaches_the_uninterrupted_weights(subjects, tmp_path, sampling):
    """Interrupted after epoch 1 by on_epoch, resumed from the partial file: bitwise the weights (current and best)
    of an uninterrupted 2-epoch run with the same seed (SGD momentum state, batch-norm statistics and the cosine
    learning rate of every step included), with either sampling of the training slices."""
    def run(settings):
        model = create("synnet", ["T1"], ["T2"], **SYNNET, lr_schedule="cosine", sampling=sampling)
        return model, model.fit(subjects[:2], subjects[2:], settings)

    full, full_summary = run(_settings(epochs=2, extra={"partial_path": str(tmp_path / "full.pt")}))
    part = tmp_path / "part.pt"
    _, first = run(_settings(epochs=2, on_epoch=lambda info: True, extra={"partial_path": str(part)}))
    assert first["stopped"] == "callback" and first["epochs"] == 1 and load_partial(part, {})["epoch"] == 1
    resumed, second = run(_settings(epochs=2, resume_from=str(part)))
    assert second["resumed_from_epoch"] == 1 and second["epochs"] == 2
    assert [r["loss"] for r in second["history"]] == [r["loss"] for r in full_summary["history"]]
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    current_full, current_resumed = load_partial(tmp_path / "full.pt", {}), load_partial(part, {})
    assert all(torch.equal(current_full["model"][k], current_resumed["model"][k]) for k in current_full["model"])
    with pytest.raises(ValueError, match="written for"):
        create("synnet", ["T1"], ["FLAIR"], **SYNNET).fit(subjects[:2], [], _settings(epochs=2, resume_from=str(part)))
    with pytest.raises(ValueError, match="no such"):
        run(_settings(resume_from=str(tmp_path / "absent.pt")))


def test_a_resumed_run_records_the_training_seconds_before_its_resumption():
    history = [{"epoch": 0, "train_seconds": 0.0}, {"epoch": 1, "train_seconds": 30.0},
               {"epoch": 2, "train_seconds": 40.0}, {"epoch": 3, "train_seconds": 50.0}]
    assert seconds_before_resumption({"resumed_from_epoch": 2, "history": history}) == 70.0
    assert seconds_before_resumption({"resumed_from_epoch": None, "history": history}) == 0.0
    assert seconds_before_resumption({}) == 0.0
    summary = {"resumed_from_epoch": 2, "history": history}
    _record_run(summary, None, ["FLAIR"], [], [], {}, seed=3, started=time.time())
    assert 70.0 <= summary["seconds"] < 75.0 and summary["seed"] == 3


def test_cosine_schedule_sets_the_learning_rate_of_every_step(subjects, tmp_path):
    """lr_schedule=cosine: 2 epochs of 2 steps at lr 0.01 take the steps at 0.01 * (1 + cos(pi k / 4)) / 2,
    k = 0..3; the optimiser state the partial file keeps after the run holds the last step's rate."""
    assert [round(scheduled_lr(0.01, "cosine", k, 4), 6) for k in range(5)] == [0.01, 0.008536, 0.005, 0.001464, 0.0]
    assert scheduled_lr(0.01, "constant", 3, 4) == 0.01
    model = create("synnet", ["T1"], ["T2"], **SYNNET, lr_schedule="cosine")
    summary = model.fit(subjects[:2], [], _settings(epochs=2, learning_rate=0.01,
                                                    extra={"partial_path": str(tmp_path / "p.pt")}))
    assert summary["lr_schedule"] == "cosine" and summary["learning_rate"] == 0.01
    groups = load_partial(tmp_path / "p.pt", {})["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [pytest.approx(0.001464, abs=1e-6)]
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        create("synnet", ["T1"], ["T2"], lr_schedule="step")


class _StudyNumbers(torch.utils.data.Dataset):
    """Items that are their study's number; ``index`` rows start with it, as the slice and patch datasets' do."""

    def __init__(self, sizes):
        self.index = [(study, k) for study, size in enumerate(sizes) for k in range(size)]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):
        return torch.tensor([float(self.index[item][0])])


@pytest.mark.parametrize("sampling", ["uniform", "per_study"])
def test_per_study_sampling_draws_every_study_equally_often(sampling):
    """A 300-item study and a 30-item one: an epoch of 330 draws holds the small study's 30 items once each under
    uniform sampling, and about half of the draws under per-study sampling."""
    drawn = []

    def loss(net, batch, device):
        drawn.extend(batch.flatten().tolist())
        return net(batch).mean()

    summary = engine.train_network(torch.nn.Linear(1, 1), _StudyNumbers([300, 30]), loss,
                                   _settings(batch_size=33), identity={"family": "toy"}, lr=0.01,
                                   schedule=Schedule(sampling=sampling))
    assert summary["sampling"] == sampling and len(drawn) == 330
    small = drawn.count(1.0)
    assert small == 30 if sampling == "uniform" else 130 <= small <= 200
    with pytest.raises(ValueError, match="sampling must be one of uniform, per_study"):
        create("cae3d", ["T1"], ["T2"], sampling="per_subject")


def _adam_synnet_run(subjects, **hparams):
    model = create("synnet", ["T1"], ["T2"], **{**SYNNET, "optimizer": "adam"}, **hparams)
    return model, model.fit(subjects[:2], [], _settings())


def test_bf16_mixed_precision_trains_float32_weights_close_to_a_float32_run(subjects, monkeypatch):
    """amp=bf16 runs the network under bfloat16 autocast on the CPU: the same seed's weights differ from the float32
    run's (the arithmetic changed) but only slightly, and stay float32; an unknown mode is refused. The CPU is
    declared bfloat16-capable so that the autocast path runs on every machine (emulated where the CPU lacks it)."""
    monkeypatch.setattr(devices, "native_bfloat16", lambda device: True)
    full, full_summary = _adam_synnet_run(subjects)
    half, half_summary = _adam_synnet_run(subjects, amp="bf16")
    assert full_summary["mixed_precision"] is None and half_summary["mixed_precision"] == "bfloat16"
    a, b = full.state_dict(), half.state_dict()
    assert all(v.dtype == a[k].dtype for k, v in b.items())
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert half_summary["history"][0]["loss"] == pytest.approx(full_summary["history"][0]["loss"], rel=0.05)
    assert half.schedule.amp == "bf16"
    with pytest.raises(ValueError, match="amp must be one of auto, bf16, off"):
        create("synnet", ["T1"], ["T2"], amp="fp8")


def test_bf16_falls_back_to_float32_where_the_cpu_has_no_native_bfloat16(subjects, monkeypatch, caplog):
    """Emulated bfloat16 is several times slower than float32 (`devices.native_bfloat16`): without it, amp=bf16 trains
    exactly the float32 run, says so in the log and records float32 in the summary, and predicts in float32."""
    monkeypatch.setattr(devices, "native_bfloat16", lambda device: False)
    full, full_summary = _adam_synnet_run(subjects)
    with caplog.at_level("WARNING", logger=devices.__name__):
        fallback, fallback_summary = _adam_synnet_run(subjects, amp="bf16")
    assert "amp bf16: cpu has no native bfloat16, training in float32 instead" in caplog.text
    assert fallback_summary["mixed_precision"] is None and fallback.schedule.amp == "bf16"
    a, b = full.state_dict(), fallback.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert devices.inference_dtype(torch.device("cpu"), "bf16") is None


def test_default_partial_file_is_removed_after_a_finished_run(subjects):
    model = create("cae3d", ["T1"], ["T2"], features=4, step=16, max_steps_per_epoch=1)
    summary = model.fit(subjects[:1], [], _settings(seed=12345))
    assert summary["partial"] is None and summary["stopped"] == "max_epochs"
    default = default_partial_path({"family": "cae3d", "inputs": ["T1"], "targets": ["T2"]}, 12345)
    assert default.name == "cae3d_T1_to_T2_seed12345.pt" and not default.exists()
    assert summary["best_metric"] == pytest.approx(-summary["history"][0]["loss"], abs=1e-4)


# --- DistributedDataParallel: 2 processes, gloo -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, subjects, start, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung worker's stacks, asked for by the test
    # a wrapper still alive when the group is destroyed takes gloo's teardown with it later, when the other rank may
    # have left (a hang seen once in CI): count them at that moment
    wrappers_at_teardown = []
    destroy = torch.distributed.destroy_process_group

    def counting_destroy(*args, **kwargs):
        wrappers_at_teardown.append(sum(isinstance(o, torch.nn.parallel.DistributedDataParallel)
                                        for o in gc.get_objects()))
        destroy(*args, **kwargs)

    torch.distributed.destroy_process_group = counting_destroy
    model = create("synnet", ["T1"], ["T2"], **SYNNET)
    # CPU + gloo even where CUDA exists: the test checks the distributed code path, not a GPU
    summary = model.fit(subjects[:2], subjects[2:], _settings(device="cpu", initial_state=start,
                                                              extra={"partial_path": f"{out_dir}/partial.pt"}))
    torch.save({"state": model.state_dict(), "summary": summary, "wrappers_at_teardown": wrappers_at_teardown},
               f"{out_dir}/rank{rank}.pt")


def test_ddp_two_gloo_processes_end_identical(subjects, tmp_path):
    # spawn, not fork: a child forked from a parent whose OpenMP pool has run can deadlock in its first parallel
    # region. `torchrun --nproc_per_node=2` runs the same code path from the environment variables set in _ddp_worker.
    # a fine-tuning run: rank 0 validates the starting weights and every rank learns the result
    base = create("synnet", ["T1"], ["T2"], **SYNNET)
    base.fit(subjects[:1], [], _settings())
    workers = mp.start_processes(_ddp_worker, args=(2, _free_port(), subjects[:3], base.state_dict(), str(tmp_path)),
                                 nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 600
    while not workers.join(timeout=5):
        if time.monotonic() > deadline:
            for process in workers.processes:
                if process.is_alive():
                    os.kill(process.pid, signal.SIGUSR1)
            time.sleep(2)
            for process in workers.processes:
                process.kill()
            pytest.fail("the two DDP workers did not finish within 10 minutes (their stacks are in the captured stderr)")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["summary"]["world_size"] == 2 and r1["summary"]["world_size"] == 2
    assert r0["wrappers_at_teardown"] == r1["wrappers_at_teardown"] == [0]
    # only rank 0 validates; every rank returns its account
    assert [row["epoch"] for row in r0["summary"]["history"]] == [0, 1]
    assert r1["summary"]["history"] == r0["summary"]["history"]
    assert r0["state"].keys() == r1["state"].keys()
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert (tmp_path / "partial.pt").is_file()  # written by rank 0 only
    # each rank saw half of every epoch's batches
    single = SliceDataset(subjects[:2], ["T1", "T2"])
    assert r0["summary"]["samples_per_epoch"] == len(single)
