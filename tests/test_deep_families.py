"""The deep families (multimodal, synnet, cae3d) end to end on small crops of real MS subjects: one short epoch,
whole-volume prediction, any input subset, three-view averaging, a decoder added to a trained model, seamless
tiling, checkpoint round trips."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsynth_app.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medsynth_app.models import TrainSettings, create
from medsynth_app.pipeline import prepare_study, synthesize
from medsynth_app.studies import find_studies
from medsynth_app.training import devices
from medsynth_app.training.datasets import SliceDataset
from medsynth_app.training.engine import seed_everything
from medsynth_app.training.inference import predict_tiled

CONTRASTS = ["T1", "T2", "FLAIR"]
QUICK = {"max_steps_per_epoch": 2}
ONE_STEP = {"max_steps_per_epoch": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shrink(subject, size=(32, 48, 16)):
    """A sub-box of the prepared subject around its brain's centre (sizes stay multiples of 16 where needed)."""
    centre = np.round(np.argwhere(subject.mask).mean(axis=0)).astype(int)
    box = []
    for c, want, have in zip(centre, size, subject.shape):
        start = int(np.clip(c - want // 2, 0, max(have - want, 0)))
        box.append(slice(start, start + want))
    box = tuple(box)
    return dataclasses.replace(subject, images={k: np.ascontiguousarray(v[box]) for k, v in subject.images.items()},
                               mask=np.ascontiguousarray(subject.mask[box]),
                               lesion=None if subject.lesion is None else np.ascontiguousarray(subject.lesion[box]))


@pytest.fixture(scope="module")
def subjects(mni_crops):
    """Three real MS subjects (mni patients 07, 19, 26) prepared and cut to 32x48x16 voxels around the brain."""
    studies = find_studies(mni_crops)
    prepared = [shrink(prepare_study(s, CONTRASTS, "FLAIR", CONTRASTS)) for s in studies]
    assert all(p.shape == (32, 48, 16) and p.mask.sum() > 1000 for p in prepared)
    return prepared


@pytest.fixture(scope="module")
def small(subjects):
    """The third subject cut to 32x32x8 voxels: predictions that are repeated many times stay cheap."""
    return shrink(subjects[2], (32, 32, 8))


def _settings(**kw):
    return TrainSettings(**{"epochs": 1, "batch_size": 4, "progress": False, "seed": 0, **kw})


FAMILIES = {
    "multimodal": {"input_dropout": 0.5, "ssim_weight": 0.5, **QUICK},
    "synnet": {"features": 8, "crop": 16, **QUICK},  # trained on 16x16 crops, predicts 32x48 slices
    "cae3d": {"features": 8, "step": 8, "tile": 16, "patch_jitter": 2, "bn_momentum": 0.01, "input_noise": 0.05,
              "ssim_weight": 0.5, **QUICK},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_one_epoch_and_predicts_a_volume(family, subjects, tmp_path):
    model = create(family, ["T1", "T2"], ["FLAIR"], **FAMILIES[family])
    summary = model.fit(subjects[:2], subjects[2:], _settings(extra={"partial_path": str(tmp_path / "p.pt")}))
    assert summary["epochs"] == 1 and summary["device"] == "cpu" and summary["world_size"] == 1
    assert summary["steps_per_epoch"] <= 2
    if "crop" in FAMILIES[family]:
        assert summary["slice_size"] == [16, 16]
    row = summary["history"][0]
    assert {"loss", "val_psnr", "val_ssim", "val_mae"} <= set(row) and np.isfinite(row["loss"])
    prediction = model.predict(subjects[2], "FLAIR")
    assert prediction.shape == subjects[2].shape and prediction.dtype == np.float32
    assert np.isfinite(prediction).all() and not prediction[~subjects[2].mask].any()
    assert (tmp_path / "p.pt").is_file()  # the partial-training file of every epoch


def test_cae3d_finish_recomputes_the_batch_norm_statistics_from_clean_patches_alone(subjects):
    """precise_bn 3: each batch norm's running mean and variance become those of its inputs over 3 batches of
    noise-free training patches (the same ones for the same seed); no weight moves."""
    model = create("cae3d", ["T1", "T2"], ["FLAIR"], features=8, tile=16, bn_momentum=0.01, input_noise=0.2, **QUICK)
    model.fit(subjects[:2], [], _settings())
    trained = {k: v.clone() for k, v in model.net.state_dict().items()}
    norms = [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    seen = {norm: [] for norm in norms}
    hooks = [norm.register_forward_hook(lambda module, args, out: seen[module].append(args[0].detach().clone()))
             for norm in norms]
    model.hparams["precise_bn"] = 3
    summary = model.finish(subjects[:2], [], _settings())
    for hook in hooks:
        hook.remove()
    assert summary["precise_bn"]["batches"] == 3 and all(len(inputs) == 3 for inputs in seen.values())
    for norm, inputs in seen.items():
        # each batch's mean and (unbiased) variance per channel, averaged over the batches
        per_channel = [x.transpose(0, 1).flatten(1) for x in inputs]
        mean = torch.stack([x.mean(dim=1) for x in per_channel]).mean(dim=0)
        variance = torch.stack([x.var(dim=1) for x in per_channel]).mean(dim=0)
        # (the CPU kernel's float32 reductions differ from these by up to ~1 % of the smallest channel means)
        assert torch.allclose(norm.running_mean, mean, rtol=1e-2, atol=1e-3 * float(mean.abs().max()))
        assert torch.allclose(norm.running_var, variance, rtol=1e-2, atol=1e-3 * float(variance.max()))
        assert norm.momentum == 0.01  # restored for later training
    after = model.net.state_dict()
    for key, value in trained.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(after[key], value) != ("running_" in key), key
    first = {k: v.clone() for k, v in after.items()}
    model.hparams["input_noise"] = 0.0  # the training's input noise plays no part
    model.finish(subjects[:2], [], _settings())
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in first.items())
    model.finish(subjects[:2], [], _settings(seed=1))
    mean = next(k for k in first if "running_mean" in k)
    assert not torch.equal(model.net.state_dict()[mean], first[mean])  # another seed, other patches


def test_cae3d_resumes_a_run_begun_with_another_finishing_step(subjects, tmp_path):
    """precise_bn acts after the training: a partial file written without it resumes into a run with it."""
    cae = {"features": 8, "tile": 16, "bn_momentum": 0.01, **QUICK}
    partial = str(tmp_path / "p.pt")
    create("cae3d", ["T1", "T2"], ["FLAIR"], **cae).fit(subjects[:2], [], _settings(extra={"partial_path": partial}))
    model = create("cae3d", ["T1", "T2"], ["FLAIR"], precise_bn=2, **cae)
    summary = model.fit(subjects[:2], [], _settings(epochs=2, resume_from=partial, extra={"partial_path": partial}))
    assert summary["resumed_from_epoch"] == 1 and summary["precise_bn"]["batches"] == 2
    with pytest.raises(ValueError, match="input_noise"):  # a training hyperparameter still must match
        create("cae3d", ["T1", "T2"], ["FLAIR"], input_noise=0.1, **cae).fit(
            subjects[:2], [], _settings(epochs=3, resume_from=partial))


def test_multimodal_predicts_from_every_subset(small):
    """A model of three inputs predicts from each of their 7 non-empty subsets (weights untrained: shapes only;
    the trained case is the next test)."""
    inputs = ["T1", "T2", "FLAIR"]
    seed_everything(3)  # an untrained output head can start silent (all zeros) for some draws of the weights
    model = create("multimodal", inputs, ["T1C"])
    predictions = []
    for k in (1, 2, 3):
        for subset in itertools.combinations(inputs, k):
            assert model.usable_inputs(list(subset) + ["PD"]) == list(subset)
            y = model.predict(small, "T1C", inputs=subset)
            assert y.shape == small.shape and np.isfinite(y).all()
            predictions.append(y)
    assert len({p.tobytes() for p in predictions}) == 7
    with pytest.raises(ValueError, match="at least one"):
        model.usable_inputs(["PD"])


def test_multimodal_brasyn_completes_every_missing_contrast(subjects, small):
    """A BraSyn-style model (inputs = targets, input dropout) synthesizes each contrast from every non-empty subset
    of the others; a target is never its own input."""
    model = create("multimodal", CONTRASTS, CONTRASTS, input_dropout=0.5, **ONE_STEP)
    model.fit(subjects[:2], [], _settings())
    subject = small
    outputs = {}
    for target in CONTRASTS:
        others = [c for c in CONTRASTS if c != target]
        for k in (1, 2):
            for subset in itertools.combinations(others, k):
                y = model.predict(subject, target, inputs=subset)
                assert y.shape == subject.shape and np.isfinite(y).all()
                outputs[target, subset] = y
        # the target's own image is ignored: all available = the two others
        assert np.array_equal(model.predict(subject, target), outputs[target, tuple(others)])
        with pytest.raises(ValueError, match="never its own input"):
            model.predict(subject, target, inputs=[target])
    assert not np.array_equal(outputs["FLAIR", ("T1",)], outputs["FLAIR", ("T2",)])


def test_synthesis_ignores_the_acquired_target_among_the_images(mni_crops):
    """Given the target's own acquired image too, the synthesis is the one from the inputs alone: the target shapes
    neither the prediction nor the brain mask (here a FLAIR with half its brain blanked out would shrink it)."""
    model = create("multimodal", CONTRASTS, CONTRASTS, input_dropout=0.5)
    checkpoint = Checkpoint.from_model(model)
    study = mni_crops / "patient26"
    images = {c: sitk.ReadImage(str(study / f"{c}.nii.gz")) for c in ("T1", "T2")}
    flair = sitk.ReadImage(str(study / "FLAIR.nii.gz"))
    blanked = sitk.GetArrayFromImage(flair)
    blanked[:, :, : blanked.shape[2] // 2] = 0
    damaged = sitk.GetImageFromArray(blanked)
    damaged.CopyInformation(flair)
    alone = sitk.GetArrayFromImage(synthesize(checkpoint, images, "FLAIR", intensity="normalised"))
    with_target = sitk.GetArrayFromImage(synthesize(checkpoint, {**images, "FLAIR": damaged}, "FLAIR",
                                                    intensity="normalised"))
    assert (alone > 0).sum() > 1000
    np.testing.assert_array_equal(with_target, alone)


def test_multimodal_three_view_average_and_lesion_channel(subjects, small):
    model = create("multimodal", ["T1", "T2"], ["FLAIR"], lesion_channel=True, **ONE_STEP)
    model.fit(subjects[:1], [], _settings())
    subject = small
    views = [model.predict(subject, "FLAIR", axes=[a]) for a in (0, 1, 2)]
    averaged = model.predict(subject, "FLAIR", axes=[0, 1, 2])
    np.testing.assert_allclose(averaged, np.mean(views, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(views[0], views[2])
    model.hparams["predict_axes"] = [0, 1, 2]
    np.testing.assert_allclose(model.predict(subject, "FLAIR"), averaged, rtol=1e-6)
    # 3 mm slices: the sagittal and coronal views of the slice stack are left out of the average.
    thick = dataclasses.replace(subject, spacing=(1.0, 1.0, 3.0))
    np.testing.assert_array_equal(model.predict(thick, "FLAIR"), views[2])


def test_multimodal_add_output_trains_only_the_new_decoder(subjects, small, tmp_path):
    model = create("multimodal", ["T1"], ["T2"], **ONE_STEP)
    model.fit(subjects[:1], [], _settings())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = model.add_output("FLAIR", subjects[:1], [small], _settings())
    assert summary["added_output"] == "FLAIR" and model.targets == ["T2", "FLAIR"]
    after = model.state_dict()
    assert set(after) - set(before) and all(k.startswith("net.decoders.FLAIR.") for k in set(after) - set(before))
    assert all(torch.equal(before[k], after[k]) for k in before)  # encoders and the T2 decoder frozen
    assert all(p.requires_grad for p in model.net.parameters())
    path = save_checkpoint(Checkpoint.from_model(model), tmp_path / "mm.pt")
    rebuilt = load_checkpoint(path).build()
    assert rebuilt.targets == ["T2", "FLAIR"]
    np.testing.assert_array_equal(rebuilt.predict(small, "FLAIR"), model.predict(small, "FLAIR"))
    with pytest.raises(ValueError, match="already"):
        model.add_output("T2", subjects[:1], [], _settings())


def _silence_heads(module):
    for decoder in module.decoders.values():
        with torch.no_grad():
            decoder.head[0].bias.fill_(-100.0)  # every pixel starts below the output ReLU
    return module


def test_multimodal_wakes_a_decoder_head_that_starts_silent(subjects, monkeypatch, tmp_path):
    """A head whose ReLU starts inactive on most brain pixels would never learn (no gradient through it): its bias is
    shifted so half the probe's brain pixels are active and the decoder trains; a head that starts active keeps its
    initialisation bitwise, and so does the rest of the network. A resumed run records the same shift."""
    from medsynth_app.models.multimodal import MultimodalModel, _activate_output_heads

    dataset = SliceDataset(subjects, CONTRASTS, (2,), crop=16)
    seed_everything(0)
    healthy = create("multimodal", ["T1", "T2"], ["FLAIR"]).net
    before = {k: v.clone() for k, v in healthy.state_dict().items()}
    assert _activate_output_heads(healthy, dataset, ["T1", "T2"], ["FLAIR"], False, seed=0) == {}
    assert all(torch.equal(before[k], v) for k, v in healthy.state_dict().items())

    silent = _silence_heads(create("multimodal", ["T1", "T2"], ["FLAIR"]).net)
    shifts = _activate_output_heads(silent, dataset, ["T1", "T2"], ["FLAIR"], False, seed=0)
    assert shifts["FLAIR"] > 99
    x = torch.stack([dataset[i] for i in range(len(dataset))])
    brain = (x[:, :2] != 0).any(dim=1, keepdim=True)
    with torch.no_grad():
        out = silent({"T1": x[:, :1], "T2": x[:, 1:2]})["outputs"]["FLAIR"]
    assert 0.2 < float((out[brain] > 0).float().mean()) < 0.8

    build = MultimodalModel._build
    monkeypatch.setattr(MultimodalModel, "_build", lambda self: _silence_heads(build(self)))
    model = create("multimodal", ["T1", "T2"], ["FLAIR"], max_steps_per_epoch=3)
    partial = str(tmp_path / "partial.pt")
    summary = model.fit(subjects, [], _settings(extra={"partial_path": partial}))
    assert summary["output_bias_shift"]["FLAIR"] > 99
    assert model.predict(subjects[0], "FLAIR")[subjects[0].mask].max() > 0
    resumed = model.fit(subjects, [], _settings(epochs=2, resume_from=partial))
    assert resumed["resumed_from_epoch"] == 1 and resumed["output_bias_shift"] == summary["output_bias_shift"]


def _without(subject, contrast):
    return dataclasses.replace(subject, id=f"{subject.id}-no{contrast}",
                               images={k: v for k, v in subject.images.items() if k != contrast},
                               norms={k: v for k, v in subject.norms.items() if k != contrast})


def test_multimodal_trains_on_incomplete_studies(subjects, small):
    """With incomplete_studies a subject lacking T2 still trains the T1 and FLAIR encoders and decoders, and never
    the T2 ones: trained on that subject alone, T2's encoder and decoder keep their initial weights."""
    brasyn = {"input_dropout": 0.5, "incomplete_studies": True, "ssim_weight": 0.5, **QUICK}
    model = create("multimodal", CONTRASTS, CONTRASTS, **brasyn)
    assert model.training_contrasts(["T1", "T2", "FLAIR", "PD"]) == CONTRASTS
    assert model.training_contrasts(["T1", "FLAIR"]) == ["T1", "FLAIR"]
    assert model.training_contrasts(["T1"]) == [] and model.training_contrasts(["PD", "T2"]) == []
    assert create("multimodal", CONTRASTS, CONTRASTS).training_contrasts(["T1", "FLAIR"]) == []
    no_t2 = _without(subjects[0], "T2")
    dataset = SliceDataset([no_t2], CONTRASTS, missing_ok=True)
    image, available = dataset[0]
    assert available.tolist() == [True, False, True] and not image[1].any() and image[0].any()
    with pytest.raises(ValueError, match="lacks T2"):
        SliceDataset([no_t2], CONTRASTS)

    seed_everything(0)  # as fit does before it builds the network
    before = model._build().state_dict()
    summary = model.fit([no_t2], [small], _settings())
    assert np.isfinite(summary["history"][0]["loss"])
    after = model.net.state_dict()
    for key in before:
        assert torch.equal(before[key], after[key]) == (".T2." in key), key
    summary = model.fit([no_t2, subjects[1]], [], _settings())
    assert np.isfinite(summary["history"][0]["loss"])
    assert not torch.equal(model.net.state_dict()["decoders.T2.head.0.weight"], before["decoders.T2.head.0.weight"])
    assert np.isfinite(model.predict(small, "T2", inputs=["T1"])).all()


@pytest.mark.parametrize(("inputs", "targets", "variant"),
                         [(["T1"], ["T2"], "SISO"), (["T1", "T2"], ["FLAIR"], "MISO"), (["T1"], ["T2", "FLAIR"], "MIMO")])
def test_synnet_variants(inputs, targets, variant, subjects, small):
    model = create("synnet", inputs, targets, features=4, depth=2, loss="l2", **ONE_STEP)
    assert model.variant == variant
    assert len(model.net.encoders) == len(inputs) and len(model.net.decoders) == len(targets)
    summary = model.fit(subjects[:1], [], _settings(learning_rate=1e-3))
    assert summary["variant"] == variant
    predictions = {t: model.predict(small, t) for t in targets}
    assert all(p.shape == small.shape and np.isfinite(p).all() for p in predictions.values())
    if variant == "MIMO":  # one decoder per target
        assert not np.allclose(predictions["T2"], predictions["FLAIR"])
    for contrast in inputs:  # every encoder arm is used: another input gives another output
        flipped = np.ascontiguousarray(small.images[contrast][::-1])
        changed = type(small)(**{**vars(small), "images": {**small.images, contrast: flipped}})
        assert not np.allclose(model.predict(changed, targets[0]), predictions[targets[0]]), contrast


def test_cae3d_tiling_has_no_seams():
    """Tiles of several sizes and one pass over the whole padded volume give the same output (odd-sized volume, so
    the last tiles reach past it)."""
    torch.manual_seed(0)
    model = create("cae3d", ["T1"], ["T2"], features=4)
    net = model.net
    for module in net.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    net.eval()
    volume = np.random.default_rng(0).random((1, 36, 30, 26)).astype(np.float32) * 3
    margin = model.margin
    assert margin == 11
    with torch.no_grad():
        padded = np.pad(volume, [(0, 0)] + [(margin, margin)] * 3)
        single = net(torch.from_numpy(padded)[None])[0].numpy()  # (36 + 22) - 22 = 36 per axis: all even
    assert single.shape == (1, 36, 30, 26)
    for tile in (16, 24, 40):
        tiled = predict_tiled(net, volume, tile, margin, torch.device("cpu"), batch_size=3)
        np.testing.assert_allclose(tiled, single, atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.predict_volume(volume * 3, tile=16), single * 3, atol=3e-5, rtol=0)
    with pytest.raises(ValueError, match="even"):
        predict_tiled(net, volume, 15, margin, torch.device("cpu"))


def test_cae3d_parity_average_makes_the_prediction_follow_a_one_voxel_shift():
    """The pooling grid makes a single pass depend on the input's parity: moving the volume by one voxel changes the
    prediction beyond the move. Averaged over the 8 parities, the prediction moves with the volume (to rounding)."""
    torch.manual_seed(0)
    model = create("cae3d", ["T1"], ["T2"], features=4)
    for module in model.net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    volume = np.random.default_rng(0).random((1, 30, 26, 22)).astype(np.float32) * 3
    moved = np.pad(volume, [(0, 0), (1, 0), (0, 0), (0, 0)])  # the same volume one voxel further along axis 0
    single, single_moved = model.predict_volume(volume, tile=16), model.predict_volume(moved, tile=16)[:, 1:]
    assert np.abs(single_moved - single).max() > 1e-2
    model.hparams["parity_average"] = True
    average, average_moved = model.predict_volume(volume, tile=16), model.predict_volume(moved, tile=16)[:, 1:]
    np.testing.assert_allclose(average_moved, average, atol=3e-5, rtol=0)
    assert np.abs(average - single).max() > 1e-3


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpoint_round_trip(family, subjects, small, tmp_path):
    model = create(family, ["T1", "T2"], ["FLAIR"], **{**FAMILIES[family], **ONE_STEP})
    model.fit(subjects[:1], [], _settings())
    path = save_checkpoint(Checkpoint.from_model(model), tmp_path / f"{family}.pt")
    loaded = load_checkpoint(path)
    assert loaded.family == family and loaded.hparams == Checkpoint.from_model(model).hparams
    rebuilt = loaded.build()
    np.testing.assert_array_equal(rebuilt.predict(small, "FLAIR"), model.predict(small, "FLAIR"))


@pytest.mark.parametrize(("family", "inputs", "targets"), [
    ("multimodal", ["T1", "T1C", "T2", "FLAIR"], ["T1", "T1C", "T2", "FLAIR"]),
    ("synnet", ["T1", "T2"], ["FLAIR"]),
    ("cae3d", ["T1"], ["T2"]),
])
def test_default_checkpoints_are_small(family, inputs, targets, tmp_path):
    model = create(family, inputs, targets)
    path = save_checkpoint(Checkpoint.from_model(model), tmp_path / "c.pt")
    assert path.stat().st_size < 20e6


def test_hparam_errors():
    with pytest.raises(ValueError, match="fusion"):
        create("multimodal", ["T1"], ["T2"], fusion="min")
    with pytest.raises(ValueError, match="axes"):
        create("multimodal", ["T1"], ["T2"], axes=[3])
    with pytest.raises(ValueError, match="loss"):
        create("synnet", ["T1"], ["T2"], loss="l1")
    with pytest.raises(ValueError, match="depth"):
        create("cae3d", ["T1"], ["T2"], depth="wide")
    for family in ("cae3d", "multimodal"):
        with pytest.raises(ValueError, match="ssim_weight"):
            create(family, ["T1"], ["T2"], ssim_weight=-1)
    with pytest.raises(ValueError, match="both an input and a target"):
        create("synnet", ["T1"], ["T1"])
    with pytest.raises(ValueError, match=r"multimodal: unknown hyperparameter incomplete, no_such \(known: latent"):
        create("multimodal", ["T1"], ["T2"], no_such=1, incomplete=True)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_network_trained_in_bfloat16_predicts_in_it(family, subjects, monkeypatch):
    """Same (untrained) weights, amp "bf16" against "off": the bfloat16 prediction differs, so it ran, by rounding
    only (correlation above 0.99 over the brain; measured 0.9987-0.99996 over five seeds). The shipped checkpoints
    move by under 0.02 dB PSNR (`medsynth_app.training.inference`). The CPU is declared bfloat16-capable so that the
    bfloat16 path runs on every machine (emulated where the CPU lacks it)."""
    monkeypatch.setattr(devices, "native_bfloat16", lambda device: True)
    hparams = {k: v for k, v in FAMILIES[family].items() if k != "max_steps_per_epoch"}
    torch.manual_seed(0)
    trained = create(family, ["T1", "T2"], ["FLAIR"], **hparams, amp="bf16")
    full = create(family, ["T1", "T2"], ["FLAIR"], **hparams, amp="off")
    full.load_state_dict(trained.state_dict())
    half, single = trained.predict(subjects[2], "FLAIR"), full.predict(subjects[2], "FLAIR")
    brain = subjects[2].mask
    assert half.dtype == np.float32 and not np.array_equal(half, single)
    assert np.corrcoef(half[brain], single[brain])[0, 1] > 0.99
