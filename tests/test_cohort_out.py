"""Leave-one-cohort-out from `python -m benchmarks --protocol`: who is trained and tested on, and the report."""
from __future__ import annotations

import json
from types import SimpleNamespace

from benchmarks.__main__ import main as run_benchmarks
from medsynth_app.folds import Folds


def test_left_out_cohorts_never_train_on_a_test_patient_seen_in_another_cohort():
    folds = Folds.load()
    studies = [SimpleNamespace(id=i) for ids in folds.folds.values() for i in ids]
    train, test = folds.cohort_split(studies, "hinet")
    tested, trained = {s.id for s in test}, {s.id for s in train}
    assert tested == {i for i in folds.folds["1"] + folds.folds["2"] + folds.folds["3"] if i.startswith("hinet")}
    assert not trained & {"brats2013_deepmedic/brats_2013_pat0004_1", "brats2013_deepmedic/brats_2013_pat0006_1"}
    assert "brats2013_deepmedic/brats_2013_pat0001_1" in trained and "open_ms_data/mni/patient07" in trained
    train, test = folds.cohort_split(studies, "deepmedic+deepvoxnet2")
    assert len(test) == 15 and not {s.id for s in train} & {"hinet_brats2018_slices/s06_train",
                                                            "hinet_brats2018_slices/s07_train"}
    assert len(train) == len(studies) - 15 - 2


def test_cohort_out_protocol_trains_on_the_other_cohorts_and_reports_beside_the_folds(mni_crops, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tasks": {"primary": ["T1->T2"]}, "baselines": ["linear"],
                                "models": [{"name": "linear", "family": "linear"}]}))
    folds = tmp_path / "folds.json"  # patient07 and patient19 stand for one patient seen in two cohorts
    folds.write_text(json.dumps({"cohorts": {"MS": ["patient"]},
                                 "left_out_cohorts": {"a": ["patient07"], "b": ["patient19"], "c": ["patient26"]},
                                 "same_patients": [["patient07", "patient19"]],
                                 "folds": {"1": ["patient07"], "2": ["patient19"], "3": ["patient26"]}}))
    out, report = tmp_path / "out", tmp_path / "benchmarks.md"
    assert run_benchmarks(["--studies", str(mni_crops), "--out", str(out), "--plan", str(plan), "--folds",
                           str(folds), "--protocol", "both", "--timing-repeats", "0", "--report", str(report),
                           "--quiet"]) == 0
    runs = out / "runs" / "T1_to_T2" / "linear"
    expected = {"a": (["patient26"], ["patient07"]), "b": (["patient26"], ["patient19"]),
                "c": (["patient07", "patient19"], ["patient26"])}
    for cohort, (trained, tested) in expected.items():
        run = json.loads((runs / f"cohort-out-{cohort}.json").read_text())
        assert run["left_out_cohort"] == cohort and "fold" not in run
        assert sorted(run["train_subjects"] + run["validation_subjects"]) == trained, cohort
        assert [r["id"] for r in run["subjects"]] == tested and "lesion_conspicuity_kept" in run["subjects"][0]
    assert sorted(p.name for p in runs.glob("fold*.json")) == ["fold1.json", "fold2.json", "fold3.json"]
    text = report.read_text(encoding="utf-8")
    assert "Left-out cohorts:" in text
    for cohort, (trained, tested) in expected.items():
        left_out = json.loads((runs / f"cohort-out-{cohort}.json").read_text())["subjects"][0]
        in_folds = next(r for f in (1, 2, 3) for r in json.loads((runs / f"fold{f}.json").read_text())["subjects"]
                        if r["id"] == tested[0])
        assert (f"| linear | {cohort} | 1 | {len(trained)} | " in text
                and f"| {left_out['psnr']:.2f} / {left_out['ssim']:.3f} | "
                    f"{in_folds['psnr']:.2f} / {in_folds['ssim']:.3f} |" in text), cohort
