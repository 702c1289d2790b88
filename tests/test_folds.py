"""The evaluation protocol's folds file and the one validation-split rule."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from conftest import SHARED, needs_shared
from medsynth_app.folds import Folds, validation_split


@dataclass
class Named:
    id: str


def _ids(studies) -> list[str]:
    return [s.id for s in studies]


def test_the_packaged_folds_are_those_of_the_evaluation_protocol():
    folds = Folds.load()
    assert sorted(folds.folds) == ["1", "2", "3"]
    every = [i for ids in folds.folds.values() for i in ids]
    assert len(every) == len(set(every)) == 33  # 7 MS, 11 hinet, 6 deepmedic, 9 deepvoxnet2: each in one fold
    assert {"brats2018_deepvoxnet2/Brats18_CBICA_AAB_1", "open_ms_data/mni/patient07"} <= set(folds.test_ids(1))
    assert "brats2018_deepvoxnet2/Brats18_TCIA08_105_1" in folds.test_ids(3)
    assert set(folds.left_out_cohorts) == {"mni", "longitudinal", "hinet", "deepmedic+deepvoxnet2"}
    for sid in every:  # every test subject in exactly one left-out cohort and one reporting cohort
        assert sum(sid.startswith(tuple(p)) for p in folds.left_out_cohorts.values()) == 1, sid
        assert folds.cohort(sid) in ("MS", "tumour"), sid


@needs_shared
def test_every_subject_of_the_folds_is_a_study_of_the_shared_data():
    from medsynth_app.studies import find_studies

    found = {s.id for s in find_studies(SHARED)}
    missing = [i for ids in Folds.load().folds.values() for i in ids if i not in found]
    assert not missing


def test_validation_is_evenly_spaced_over_the_given_order_and_never_everything():
    studies = [Named(f"s{i:02d}") for i in range(11)]
    train, validation = validation_split(studies, count=1)
    assert _ids(validation) == ["s05"] and len(train) == 10  # one: the middle one
    train, validation = validation_split(studies, share=0.3)
    assert _ids(validation) == ["s00", "s05", "s10"] and _ids(train) == [s.id for s in studies if s not in validation]
    assert _ids(validation_split(studies[:2], share=0.9)[1]) == ["s01"]  # at most all but one
    assert validation_split(studies[:1], share=0.5) == (studies[:1], [])
    assert validation_split(studies, share=0.0) == (studies, [])
    train, validation = validation_split(studies, named=["s03"])
    assert _ids(validation) == ["s03"] and len(train) == 10
    with pytest.raises(ValueError, match="s99 not among the training studies"):
        validation_split(studies, named=["s99"])
