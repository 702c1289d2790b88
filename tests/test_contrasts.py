import pytest

from medsynth_app.contrasts import BRAIN_MASK, LESION_MASK, canonical_contrast, parse_name

NAMES = {
    # shared data
    "T1.nii.gz": ("", "T1"), "T1POST.nii.gz": ("", "T1C"), "FLAIR.nii.gz": ("", "FLAIR"),
    "Flair_subtrMeanDivStd.nii.gz": ("", "FLAIR"), "T1c_subtrMeanDivStd.nii.gz": ("", "T1C"),
    "brainmask.nii.gz": ("", BRAIN_MASK), "OTMultiClass.nii.gz": ("", LESION_MASK),
    "lesion_consensus.nii.gz": ("", LESION_MASK), "T1W_in_FLAIR_space.nii.gz": ("", "T1"),
    "T2W_in_FLAIR_space.nii.gz": ("", "T2"), "t1ce.nii.gz": ("", "T1C"), "flair.nii.gz": ("", "FLAIR"),
    "consensus_lesions_on_3DFLAIR_grid.nii.gz": ("", LESION_MASK), "PD.nii": ("", "PD"), "avg152T1.nii": ("", "T1"),
    # BIDS
    "sub-01_ce-gd_T1w.nii.gz": ("sub-01", "T1C"), "sub-01_T2w.nii.gz": ("sub-01", "T2"),
    "sub-01_PDw.nii.gz": ("sub-01", "PD"), "sub-01_FLAIR.nii.gz": ("sub-01", "FLAIR"),
    "sub-01_dwi.nii.gz": ("sub-01", "DWI"),
    # BraTS old and new
    "Brats18_2013_2_1_t1ce.nii.gz": ("Brats18_2013_2_1", "T1C"), "Brats18_2013_2_1_seg.nii.gz": ("Brats18_2013_2_1", LESION_MASK),
    "BraTS-GLI-00000-000-t1n.nii.gz": ("BraTS-GLI-00000-000", "T1"),
    "BraTS-GLI-00000-000-t1c.nii.gz": ("BraTS-GLI-00000-000", "T1C"),
    "BraTS-GLI-00000-000-t2w.nii.gz": ("BraTS-GLI-00000-000", "T2"),
    "BraTS-GLI-00000-000-t2f.nii.gz": ("BraTS-GLI-00000-000", "FLAIR"),
    # other conventions
    "T1GADO.nii.gz": ("", "T1C"), "DP.nii.gz": ("", "PD"), "case3_fla.nrrd": ("case3", "FLAIR"),
    "GOLD_STANDARD.nii.gz": ("", LESION_MASK), "brain_mask.mha": ("", BRAIN_MASK), "sub01_T1.nii.gz": ("sub01", "T1"),
    "patient_T1_Gd.nii.gz": ("patient", "T1C"),
}


@pytest.mark.parametrize("name,expected", NAMES.items())
def test_names_are_recognised(name, expected):
    assert tuple(parse_name(name)) == expected


@pytest.mark.parametrize("name", ["README.nii.gz", "patient01", "notes.txt", "image_0001.nii.gz"])
def test_unknown_names_are_not_guessed(name):
    assert parse_name(name) is None


def test_canonical_contrast_rejects_masks_and_unknown_names():
    assert canonical_contrast("t2w") == "T2"
    assert canonical_contrast("FLAIR") == "FLAIR"
    with pytest.raises(ValueError, match="unknown contrast"):
        canonical_contrast("brainmask")
    with pytest.raises(ValueError, match="unknown contrast"):
        canonical_contrast("CT")
