"""Lesion-aware sampling of the deep families' training samples, on a real MS crop with its lesion mask."""
from __future__ import annotations

import json

import pytest
import torch

from medsynth_app.pipeline import prepare_study
from medsynth_app.studies import find_studies
from medsynth_app.training.datasets import PatchDataset, SliceDataset, lesion_candidates
from medsynth_app.training.distributed import DistContext
from medsynth_app.training.engine import _sampler
from medsynth_app.training.schedule import Schedule


@pytest.fixture(scope="module")
def patient07(mni_crops):
    [study] = [s for s in find_studies(mni_crops) if s.id == "patient07"]
    return prepare_study(study, ["T1", "T2", "FLAIR"], "FLAIR", ["T1", "T2", "FLAIR"])


def _drawn_share(dataset, share: float, epochs: int = 4) -> tuple[float, float]:
    """(share of lesion rows in the dataset, share of lesion rows among the sampler's draws over ``epochs``)."""
    lesion = dataset.lesion_rows()
    sampler = _sampler(dataset, Schedule(lesion_share=share), DistContext(), seed=3)
    drawn = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch)
        drawn += list(sampler)
    return float(lesion.double().mean()), float(lesion[drawn].double().mean())


# Measured on the patient07 crop: 48 % of its slices (three axes) and 5 % of its 8^3 patches hold lesion voxels; drawn
# 79 % and 49 % of the time with lesion_share 0.8 and 0.5.
def test_slices_and_patches_with_lesions_are_drawn_at_the_requested_share(patient07):
    slices = SliceDataset([patient07], ["T1", "T2", "FLAIR"], axes=(0, 1, 2))
    natural, drawn = _drawn_share(slices, 0.8)
    assert natural < 0.7 and drawn == pytest.approx(0.8, abs=0.05), (natural, drawn)
    patches = PatchDataset([patient07], ["T1", "T2"], ["FLAIR"], output_size=8, margin=4, step=8)
    natural, drawn = _drawn_share(patches, 0.5, epochs=8)
    assert natural < 0.1 and drawn == pytest.approx(0.5, abs=0.05), (natural, drawn)
    # a share below the natural one changes nothing; 0 is the plain shuffled sampler
    natural, drawn = _drawn_share(slices, 0.01)
    assert drawn == pytest.approx(natural, abs=0.1), (natural, drawn)
    assert type(_sampler(slices, Schedule(), DistContext(), 3)).__name__ == "DistributedSampler"
    with pytest.raises(ValueError, match="lesion_share"):
        Schedule(lesion_share=1.0)


def test_without_a_lesion_mask_the_acquired_flairs_hyperintensities_are_the_candidates(patient07):
    masked = lesion_candidates(patient07)
    assert masked.sum() == (patient07.lesion & patient07.mask).sum() > 0
    patient07.lesion = None
    try:
        found = lesion_candidates(patient07)
        assert found.any() and not (found & ~patient07.mask).any()
        assert (found & masked).sum() / masked.sum() > 0.5  # most of the real lesion is among the candidates
    finally:
        patient07.lesion = masked


def test_lesion_share_is_a_training_hparam_recorded_in_the_checkpoint(mni_crops, tmp_path):
    from medsynth_app.checkpoint import load_checkpoint
    from medsynth_app.cli import main

    out, crop_folds = tmp_path / "synnet.pt", tmp_path / "folds.json"
    crop_folds.write_text(json.dumps({"folds": {"1": ["patient07"], "2": ["patient19"], "3": ["patient26"]}}))
    assert main(["train", "--model", "synnet", "--inputs", "T1,T2", "--target", "FLAIR", "--studies", str(mni_crops),
                 "--fold", "1", "--folds", str(crop_folds), "--batch-size", "2", "--epochs", "1", "--hparam",
                 "max_steps_per_epoch=1", "--hparam", "crop=32", "--hparam", "lesion_share=0.5", "--quiet", "--out",
                 str(out)]) == 0
    checkpoint = load_checkpoint(out)
    assert checkpoint.hparams["lesion_share"] == 0.5 and checkpoint.training["lesion_share"] == 0.5
