"""The medsynth command line end to end on crops of real MS subjects."""
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from gates import assert_beats_trivial

from medsynth_app import pipeline
from medsynth_app.cli import main
from medsynth_app.pipeline import prepare_study
from medsynth_app.studies import find_studies


@pytest.fixture(scope="module")
def crop_folds(mni_crops, tmp_path_factory):
    path = tmp_path_factory.mktemp("folds") / "folds.json"
    path.write_text(json.dumps({"cohorts": {"MS": ["patient"]},
                                "folds": {"1": ["patient07"], "2": ["patient19"], "3": ["patient26"]}}))
    return path


@pytest.fixture(scope="module")
def trained(mni_crops, crop_folds, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights") / "linear_T1+T2_to_FLAIR.pt"
    assert main(["train", "--model", "linear", "--inputs", "T1,T2", "--target", "FLAIR", "--studies",
                 str(mni_crops), "--fold", "1", "--folds", str(crop_folds), "--quiet", "--out", str(out)]) == 0
    return out


def test_train_records_the_fold_and_subjects(trained):
    from medsynth_app.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(trained)
    assert checkpoint.family == "linear" and checkpoint.inputs == ["T1", "T2"] and checkpoint.targets == ["FLAIR"]
    assert checkpoint.training["subjects"] == ["patient19", "patient26"] and checkpoint.training["fold"] == "1"
    assert checkpoint.target_norms["FLAIR"]["method"] == "mean"


def test_synthesize_writes_a_marked_float_volume_on_the_input_grid(trained, mni_crops, tmp_path, capsys):
    subject = mni_crops / "patient07"
    out = tmp_path / "flair.nii.gz"
    assert main(["synthesize", "--weights", str(trained), "--input", f"T1={subject / 'T1.nii.gz'}",
                 "--input", f"T2={subject / 'T2.nii.gz'}", "--out", str(out)]) == 0
    assert "SYNTHETIC FLAIR by linear from T1+T2" in capsys.readouterr().out
    synthetic, t1 = nib.load(out), nib.load(subject / "T1.nii.gz")
    assert synthetic.shape == t1.shape and np.allclose(synthetic.affine, t1.affine, atol=1e-4)
    assert synthetic.get_data_dtype() == np.float32
    assert synthetic.header["descrip"].tobytes().startswith(b"SYNTHETIC FLAIR by linear from T1+T2")
    acquired = nib.load(subject / "FLAIR.nii.gz").get_fdata()
    values = synthetic.get_fdata()
    inside = (acquired > 0) & (values > 0)
    assert np.corrcoef(values[inside], acquired[inside])[0, 1] > 0.6
    # on the training data's intensity scale: within a factor 2 of the acquired FLAIR's mean
    assert 0.5 < values[inside].mean() / acquired[inside].mean() < 2.0


def test_evaluate_on_a_held_out_fold(trained, mni_crops, crop_folds, tmp_path, capsys):
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--weights", str(trained), "--inputs", "T1,T2", "--target", "FLAIR", "--studies",
                 str(mni_crops), "--fold", "1", "--folds", str(crop_folds), "--quiet", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    [row] = result["subjects"]
    lesion_keys = ("lesion_conspicuity", "acquired_lesion_conspicuity", "lesion_conspicuity_kept", "lesion_mae",
                   "lesion_detection_dice", "acquired_lesion_detection_dice", "lesion_detection_sensitivity",
                   "acquired_lesion_detection_sensitivity", "brasyn_ssim_lesion", "brasyn_ssim_healthy", "brasyn_psnr")
    assert all(k in row and k in result["summary"]["pooled"] for k in lesion_keys), sorted(row)
    assert capsys.readouterr().out.split("\n")[0].startswith("pooled   n= 1  lesion conspicuity ")
    assert row["id"] == "patient07" and row["cohort"] == "MS" and "warning" not in result
    assert result["summary"]["pooled"]["psnr"]["n"] == 1
    [study] = [s for s in find_studies(mni_crops) if s.id == "patient07"]
    subject = prepare_study(study, ["T1", "T2", "FLAIR"], "FLAIR", ["T1", "T2", "FLAIR"])
    # Measured: linear 20.92 dB / 0.665, keeping 30 % of the lesions' conspicuity (1.107 against 1.361); the best
    # trivial predictors: the constant 17.59 dB, T2 copied 0.461 SSIM.
    assert_beats_trivial(row, subject, "FLAIR", ["T1", "T2"], psnr=2.0, ssim=0.12, conspicuity=0.2,
                         label="linear fold 1 on the patient07 crop")


def test_models_lists_checkpoints_from_the_weight_path(trained, monkeypatch, capsys):
    monkeypatch.setenv("MEDSYNTH_WEIGHTS", str(trained.parent))
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["path"] == str(trained) and r["targets"] == ["FLAIR"] for r in rows)


def test_shipped_linear_weights_are_found_and_used(mni_crops, tmp_path):
    report = tmp_path / "shipped.json"
    assert main(["evaluate", "--model", "linear", "--inputs", "T1,T2", "--target", "FLAIR", "--studies",
                 str(mni_crops), "--quiet", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["weights"].endswith("apps/medsynth/model/linear_T1+T2_to_FLAIR.pt")
    assert len(result["subjects"]) == 3


def test_errors_are_one_line_naming_the_problem(trained, mni_crops, tmp_path, capsys):
    subject = mni_crops / "patient07"
    assert main(["synthesize", "--weights", str(trained), "--input", f"T1={subject / 'T1.nii.gz'}",
                 "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "linear needs T1+T2; missing T2" in capsys.readouterr().err
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    assert main(["synthesize", "--weights", str(trained), "--input", f"T1={subject / 'T1.nii.gz'}",
                 "--input", f"T2={bad}", "--out", str(tmp_path / "x.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: damaged gzip file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.nii.gz").exists()
    zeros = tmp_path / "zeros.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(subject / "T2.nii.gz")) * 0, str(zeros))
    assert main(["synthesize", "--weights", str(trained), "--input", f"T1={subject / 'T1.nii.gz'}",
                 "--input", f"T2={zeros}", "--out", str(tmp_path / "x.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert f"{zeros}: every voxel is 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.nii.gz").exists()
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"garbage")
    assert main(["synthesize", "--weights", str(fake), "--input", f"T1={subject / 'T1.nii.gz'}",
                 "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert f"{fake}: not a readable MedSynth checkpoint" in capsys.readouterr().err
    assert main(["synthesize", "--weights", str(trained), "--input", f"CT={subject / 'T1.nii.gz'}",
                 "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "unknown contrast 'CT'" in capsys.readouterr().err


def test_evaluate_skips_an_unusable_study_and_says_why(trained, mni_crops, tmp_path, capsys):
    root = tmp_path / "studies"
    root.mkdir()
    (root / "good").symlink_to(mni_crops / "patient19")
    broken = root / "broken"
    broken.mkdir()
    for name in ("T1", "T2", "FLAIR"):
        (broken / f"{name}.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--weights", str(trained), "--inputs", "T1,T2", "--target", "FLAIR", "--studies",
                 str(root), "--quiet", "--json", str(report)]) == 0
    assert "warning: skipped broken:" in capsys.readouterr().err
    result = json.loads(report.read_text())
    assert [r["id"] for r in result["subjects"]] == ["good"]
    assert result["skipped"][0]["id"] == "broken" and "damaged gzip file" in result["skipped"][0]["error"]


def test_training_prints_each_epochs_validation_scores(mni_crops, crop_folds, tmp_path, capsys):
    train = ["train", "--model", "synnet", "--inputs", "T1", "--target", "T2", "--studies", str(mni_crops), "--fold",
             "1", "--folds", str(crop_folds), "--batch-size", "2", "--hparam", "max_steps_per_epoch=1", "--hparam",
             "crop=32"]
    assert main([*train, "--val-fraction", "0.5", "--epochs", "2", "--out", str(tmp_path / "synnet.pt")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("synnet epoch ") and ": loss " in x]
    assert [x.split(":")[0] for x in lines] == ["synnet epoch 1/2", "synnet epoch 2/2"]
    assert "val_psnr" in lines[0] and "val_ssim" in lines[0] and lines[0].endswith("(best so far)")
    assert main([*train, "--quiet", "--epochs", "1", "--out", str(tmp_path / "q.pt")]) == 0
    assert ": loss " not in capsys.readouterr().err


def test_multimodal_trains_on_incomplete_studies_and_validates_on_named_ones(mni_crops, tmp_path, capsys):
    import shutil

    from medsynth_app.checkpoint import load_checkpoint

    studies = tmp_path / "studies"
    shutil.copytree(mni_crops, studies)
    (studies / "patient07" / "T2.nii.gz").unlink()
    run = ["train", "--model", "multimodal", "--inputs", "T1,T2,FLAIR", "--target", "T1,T2,FLAIR", "--studies",
           str(studies), "--val-studies", "patient26", "--quiet", "--epochs", "1", "--batch-size", "4",
           "--hparam", "max_steps_per_epoch=1", "--hparam", "crop=32", "--hparam", "input_dropout=0.5"]
    complete = tmp_path / "complete.pt"
    assert main([*run, "--out", str(complete)]) == 0
    assert load_checkpoint(complete).training["subjects"] == ["patient19"]
    incomplete = tmp_path / "incomplete.pt"
    assert main([*run, "--hparam", "incomplete_studies=true", "--out", str(incomplete)]) == 0
    training = load_checkpoint(incomplete).training
    assert training["subjects"] == ["patient07", "patient19"] and training["validation_subjects"] == ["patient26"]
    assert set(training["validation"]) == {"T1", "T2", "FLAIR"}
    capsys.readouterr()
    assert main([*run[:-6], "--val-studies", "patient99", "--out", str(tmp_path / "x.pt")]) == 2
    assert "--val-studies: patient99 not among the training studies" in capsys.readouterr().err


def test_a_multimodal_model_fine_tunes_from_one_trained_for_more_contrasts(mni_crops, crop_folds, tmp_path, capsys):
    """A T1 -> FLAIR model started from a T1+T2 -> T2+FLAIR one at learning rate 0 holds that one's T1 encoder and
    FLAIR decoder, and nothing else; a model needing an encoder or decoder the checkpoint lacks is refused."""
    import torch

    from medsynth_app.checkpoint import load_checkpoint
    from medsynth_app.pipeline import synthesize

    quick = ["--model", "multimodal", "--studies", str(mni_crops), "--fold", "1", "--folds", str(crop_folds), "--quiet",
             "--epochs", "1", "--batch-size", "4"]
    wide, narrow = tmp_path / "wide.pt", tmp_path / "narrow.pt"
    assert main(["train", *quick, "--inputs", "T1,T2", "--target", "T2,FLAIR", "--hparam", "max_steps_per_epoch=1",
                 "--hparam", "crop=32", "--out", str(wide)]) == 0
    assert main(["train", *quick, "--inputs", "T1", "--target", "FLAIR", "--init", str(wide), "--lr", "0",
                 "--out", str(narrow)]) == 0
    wide_ck, narrow_ck = load_checkpoint(wide), load_checkpoint(narrow)
    assert narrow_ck.inputs == ["T1"] and narrow_ck.targets == ["FLAIR"]
    assert {k.split(".")[1] + "." + k.split(".")[2] for k in narrow_ck.state} == {"encoders.T1", "decoders.FLAIR"}
    convs = [k for k, v in narrow_ck.state.items() if k.endswith(".weight") and v.dim() == 4]
    assert convs and all(torch.equal(narrow_ck.state[k], wide_ck.state[k]) for k in convs)
    assert narrow_ck.training["fine_tuned_from"]["task"] == wide_ck.task
    t1 = {"T1": sitk.ReadImage(str(mni_crops / "patient07" / "T1.nii.gz"))}  # max fusion: one input, same latent
    np.testing.assert_allclose(*(sitk.GetArrayFromImage(synthesize(c, t1, "FLAIR", intensity="normalised"))
                                 for c in (narrow_ck, wide_ck)), atol=1e-5)
    capsys.readouterr()
    assert main(["train", *quick, "--inputs", "T1,T1C", "--target", "T1", "--init", str(wide),
                 "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint has no encoder for T1C nor decoder for T1" in err, err


def test_add_output_trains_a_new_decoder_alone_and_synthesizes_with_it(mni_crops, crop_folds, trained, tmp_path,
                                                                        capsys):
    import torch

    from medsynth_app.checkpoint import load_checkpoint

    quick = ["--studies", str(mni_crops), "--fold", "1", "--folds", str(crop_folds), "--quiet", "--epochs", "1",
             "--batch-size", "4", "--hparam", "max_steps_per_epoch=1", "--hparam", "crop=32"]
    base = tmp_path / "multimodal_T1+T2_to_T2.pt"
    assert main(["train", "--model", "multimodal", "--inputs", "T1", "--target", "T2", *quick, "--out",
                 str(base)]) == 0
    extended = tmp_path / "multimodal_T1_to_T2+FLAIR.pt"
    assert main(["add-output", "--weights", str(base), "--target", "FLAIR", "--val-fraction", "0.5", *quick,
                 "--out", str(extended)]) == 0
    old, new = load_checkpoint(base), load_checkpoint(extended)
    assert new.targets == ["T2", "FLAIR"] and set(new.target_norms) == {"T2", "FLAIR"}
    assert all(torch.equal(old.state[k], new.state[k]) for k in old.state)  # encoder and T2 decoder frozen
    assert {k for k in new.state if k not in old.state} and all(
        k.startswith("net.decoders.FLAIR.") for k in new.state if k not in old.state)
    added = new.training["added_outputs"]["FLAIR"]
    assert added["subjects"] == ["patient19"] and added["validation_subjects"] == ["patient26"]
    assert added["slice_size"] == [32, 32]
    # one step gates no quality; the recorded validation scores must be the new decoder's own on patient26
    [row] = pipeline.evaluate(new, [s for s in find_studies(mni_crops) if s.id == "patient26"], "FLAIR",
                              progress=False)
    assert added["validation"]["FLAIR"]["psnr"] == pytest.approx(row["psnr"], abs=1e-3)
    assert added["validation"]["FLAIR"]["ssim"] == pytest.approx(row["ssim"], abs=1e-4)
    capsys.readouterr()
    subject = mni_crops / "patient07"
    out = tmp_path / "flair.nii.gz"
    assert main(["synthesize", "--weights", str(extended), "--input", f"T1={subject / 'T1.nii.gz'}", "--target",
                 "FLAIR", "--out", str(out)]) == 0
    assert nib.load(out).header["descrip"].tobytes().startswith(b"SYNTHETIC FLAIR by multimodal from T1")
    assert main(["add-output", "--weights", str(trained), "--target", "T1C", *quick[:6], "--out",
                 str(tmp_path / "x.pt")]) == 2
    assert "linear cannot add an output decoder" in capsys.readouterr().err
    assert main(["add-output", "--weights", str(base), "--target", "FLAIR", *quick[:6], "--hparam",
                 "latent_channels=8", "--out", str(tmp_path / "x.pt")]) == 2
    assert "keeps the trained latent_channels" in capsys.readouterr().err


def test_init_fine_tunes_from_a_checkpoints_weights_and_refuses_what_does_not_fit(mni_crops, crop_folds, trained,
                                                                                   tmp_path, capsys):
    """--init starts from the checkpoint's weights with its hyperparameters: at learning rate 0 (Adam, weight decay
    included, then moves nothing) the convolutions come back unchanged, where a run from scratch holds fresh ones."""
    import torch

    from medsynth_app.checkpoint import load_checkpoint

    quick = ["--studies", str(mni_crops), "--fold", "1", "--folds", str(crop_folds), "--quiet", "--epochs", "1",
             "--batch-size", "2"]
    task = ["--model", "synnet", "--inputs", "T1", "--target", "T2"]
    base = tmp_path / "base.pt"
    assert main(["train", *task, *quick, "--hparam", "features=8", "--hparam", "depth=2", "--hparam", "crop=32",
                 "--hparam", "max_steps_per_epoch=2", "--out", str(base)]) == 0
    tuned, scratch = tmp_path / "tuned.pt", tmp_path / "scratch.pt"
    assert main(["train", *task, *quick, "--init", str(base), "--lr", "0", "--hparam", "loss=l2",
                 "--out", str(tuned)]) == 0
    assert main(["train", *task, *quick, "--lr", "0", "--hparam", "features=8", "--hparam", "depth=2", "--hparam",
                 "crop=32", "--hparam", "max_steps_per_epoch=2", "--out", str(scratch)]) == 0
    base_ck, tuned_ck, scratch_ck = (load_checkpoint(p) for p in (base, tuned, scratch))
    assert tuned_ck.hparams == {**base_ck.hparams, "loss": "l2"}
    convs = [k for k, v in base_ck.state.items() if k.endswith(".weight") and v.dim() == 4]
    assert convs and all(torch.equal(tuned_ck.state[k], base_ck.state[k]) for k in convs)
    assert not any(torch.equal(scratch_ck.state[k], base_ck.state[k]) for k in convs)
    assert tuned_ck.training["fine_tuned_from"]["task"] == "T1->T2" and "fine_tuned_from" not in scratch_ck.training
    capsys.readouterr()
    refused = {
        "cannot fine-tune synnet T1->FLAIR from a synnet T1->T2 checkpoint": ["--model", "synnet", "--inputs", "T1",
                                                                              "--target", "FLAIR", "--init", str(base)],
        "cannot fine-tune linear T1+T2->FLAIR from a synnet": ["--model", "linear", "--inputs", "T1,T2", "--target",
                                                               "FLAIR", "--init", str(base)],
        "linear cannot start from a checkpoint's weights": ["--model", "linear", "--inputs", "T1,T2", "--target",
                                                            "FLAIR", "--init", str(trained)],
        "synnet: the starting weights do not fit this network": [*task, "--init", str(base), "--hparam",
                                                                 "features=4"],
        "with zscore normalisation from a checkpoint trained with mean": [*task, "--init", str(base),
                                                                          "--normalisation", "zscore"],
    }
    for message, args in refused.items():
        assert main(["train", *args, *quick, "--out", str(tmp_path / "x.pt")]) == 2, message
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("medsynth: error: ") and message in last, last
    assert not (tmp_path / "x.pt").exists()


def test_finish_recomputes_a_cae3d_checkpoints_batch_norm_statistics_on_its_training_studies(mni_crops, tmp_path,
                                                                                               capsys):
    import shutil

    import torch

    from medsynth_app.checkpoint import load_checkpoint

    trained = tmp_path / "cae3d.pt"
    assert main(["train", "--model", "cae3d", "--inputs", "T1", "--target", "T2", "--studies", str(mni_crops),
                 "--val-studies", "patient26", "--quiet", "--epochs", "1", "--batch-size", "4", "--hparam",
                 "features=8", "--hparam", "tile=16", "--hparam", "max_steps_per_epoch=2", "--out", str(trained)]) == 0
    before = trained.read_bytes()
    finished = tmp_path / "finished.pt"
    finish = ["finish", "--weights", str(trained), "--studies", str(mni_crops), "--quiet"]
    assert main([*finish, "--hparam", "precise_bn=2", "--out", str(finished)]) == 0
    assert trained.read_bytes() == before  # the trained checkpoint stays as it was
    base, result = load_checkpoint(trained), load_checkpoint(finished)
    assert result.training["precise_bn"]["batches"] == 2 and result.hparams["precise_bn"] == 2
    assert result.training["subjects"] == base.training["subjects"] == ["patient07", "patient19"]
    assert set(result.training["validation"]) == {"T2"}
    for key, value in base.state.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(result.state[key], value) != ("running_" in key), key
    capsys.readouterr()
    assert main([*finish, "--hparam", "input_noise=0.1", "--out", str(finished)]) == 2
    assert "input_noise: not a finishing hyperparameter of cae3d (those are: precise_bn)" in capsys.readouterr().err
    partial = tmp_path / "partial"
    shutil.copytree(mni_crops, partial)
    shutil.rmtree(partial / "patient19")
    assert main(["finish", "--weights", str(trained), "--studies", str(partial), "--hparam", "precise_bn=2",
                 "--out", str(finished)]) == 2
    assert f"{trained} trained on studies not under {partial}: patient19" in capsys.readouterr().err


def test_help_version_and_argument_errors_answer_without_loading_heavy_libraries():
    """`medsynth --help`, `--version` and argument errors import neither torch, MONAI, SimpleITK nor numpy."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom medsynth_app.cli import main\n"
            "for argv in (['--version'], ['--help'], ['synthesize'], ['train', '--help'], ['evaluate', '--cv']):\n"
            "    try:\n        main(argv)\n    except SystemExit as done:\n        assert done.code in (0, 2), done.code\n"
            "print('LOADED:' + ','.join(m for m in ('torch', 'monai', 'SimpleITK', 'numpy', 'nibabel', 'scipy')"
            " if m in sys.modules))")
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])})
    assert done.stdout.strip().splitlines()[-1] == "LOADED:"
    assert "medsynth 0.1.0" in done.stdout and "the following arguments are required" in done.stderr


def test_installed_packages_add_subcommands_through_entry_points(tmp_path, monkeypatch, capsys):
    (tmp_path / "medsynth_hello.py").write_text(
        "def register(subparsers):\n"
        "    p = subparsers.add_parser('hello', help='greet')\n"
        "    p.add_argument('--name', default='world')\n"
        "    p.set_defaults(func=lambda args: print(f'hello {args.name}') or 0)\n")
    info = tmp_path / "medsynth_hello-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medsynth-hello\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[medsynth.commands]\nhello = medsynth_hello:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["hello", "--name", "MRI"]) == 0
    assert capsys.readouterr().out == "hello MRI\n"


def test_synthesize_with_a_family_picks_its_only_target_or_lists_the_choices(trained, mni_crops, monkeypatch,
                                                                             tmp_path, capsys):
    monkeypatch.setenv("MEDSYNTH_WEIGHTS", str(trained.parent))
    subject = mni_crops / "patient07"
    out = tmp_path / "flair.nii.gz"
    assert main(["synthesize", "--model", "linear", "--input", f"T1={subject / 'T1.nii.gz'}",
                 "--input", f"T2={subject / 'T2.nii.gz'}", "--out", str(out)]) == 0
    assert f"SYNTHETIC FLAIR by linear from T1+T2, weights {trained}" in capsys.readouterr().out
    assert main(["synthesize", "--model", "multimodal", "--input", f"T2={subject / 'T2.nii.gz'}",
                 "--out", str(tmp_path / "x.nii.gz")]) == 2  # shipped: the any-subset model alone takes T2
    err = capsys.readouterr().err
    assert "multimodal has checkpoints for several targets from T2: choose one with --target (FLAIR, T1, T1C)" in err
    assert not (tmp_path / "x.nii.gz").exists()
