"""`python -m benchmarks` on crops of three real MS subjects: per-fold result files, resume, report, figures."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from gates import assert_beats_trivial, trivial_scores

from medsynth_app import pipeline
from benchmarks.__main__ import main as run_benchmarks
from benchmarks.plan import Comparison, Plan
from benchmarks.report import README_ROWS, README_TASKS, comparison_lines, data_set_table, readme_table
from medsynth_app.checkpoint import load_checkpoint
from medsynth_app.metrics import paired_ttest
from medsynth_app.studies import find_studies
from medsynth_app.task import Task
from medsynth_app.training.devices import native_bfloat16

def main(argv: list[str]) -> int:
    """The harness's command line, given the arguments after ``benchmark``."""
    assert argv[0] == "benchmark"
    return run_benchmarks(argv[1:])


MODELS = [
    {"name": "linear", "family": "linear"},
    {"name": "replica", "family": "replica", "hparams": {"n_estimators": 4, "max_samples": 6000}},
    {"name": "VDN+SC", "family": "vdn", "epochs": 2, "hparams": {"shrink": True, "voxels_per_subject": 3000,
                                                               "retrain_epochs": 1, "shrink_samples": 2000}},
    {"name": "CDN", "family": "cdn", "epochs": 2, "hparams": {"voxels_per_subject": 3000}},
    {"name": "LSDN-1", "family": "lsdn", "epochs": 2, "hparams": {"shrink": False, "voxels_per_subject": 3000}},
]


@pytest.fixture(scope="module")
def bench(mni_crops, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    plan = root / "plan.json"
    plan.write_text(json.dumps({"tasks": {"primary": ["T1->T2"], "secondary": ["T2->T1"]},
                                "baselines": ["linear", "replica"], "models": MODELS,
                                "comparisons": [{"title": "LSDN > CDN > VDN in SNR", "metrics": ["snr", "ssim"],
                                                 "pairs": [["LSDN-1", "CDN"], ["CDN", "VDN+SC"]]}]}))
    folds = root / "folds.json"
    folds.write_text(json.dumps({"cohorts": {"MS": ["patient"]},
                                 "folds": {"1": ["patient07"], "2": ["patient19"], "3": ["patient26"]}}))
    args = ["benchmark", "--studies", str(mni_crops), "--out", str(root / "out"), "--plan", str(plan), "--folds",
            str(folds), "--timing-repeats", "1", "--report", str(root / "docs" / "benchmarks.md"), "--quiet"]
    assert main(args) == 0
    return root, args


def test_plan_parses_tasks_and_rejects_unknown_families(tmp_path):
    assert Task.parse("t1 + T2 -> flair") == Task(("T1", "T2"), "FLAIR")
    with pytest.raises(ValueError, match="INPUT"):
        Task.parse("T1 T2")
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"tasks": {"primary": ["T1->T2"]}, "models": [{"name": "x", "family": "nope"}]}))
    with pytest.raises(ValueError, match="unknown model family nope"):
        Plan.load(bad)
    bad.write_text(json.dumps({"tasks": {"primary": ["T1->T2"]}, "models": [{"name": "x", "family": "linear"}],
                               "comparisons": [{"title": "t", "metrics": ["psnr"], "pairs": [["x", "y"]]}]}))
    with pytest.raises(ValueError, match="comparisons name models the plan does not have: y"):
        Plan.load(bad)
    bad.write_text(json.dumps({"tasks": {"primary": ["T1->T2"]},
                               "models": [{"name": "x", "family": "linear", "seeds": [1, 1]}]}))
    with pytest.raises(ValueError, match="x: seeds must be distinct"):
        Plan.load(bad)
    default = Plan.load()
    assert [t.name for t in default.tasks()] == ["T1+T2->FLAIR", "T1->T2"]
    assert {"linear", "replica", "mp", "vdn", "cdn", "lsdn", "synnet", "multimodal", "cae3d"} == \
        {e.family for e in default.entries}
    rates = {e.name: e.lr for e in default.entries}
    assert rates["multimodal"] == 1e-3 and rates["synnet"] is None  # None: the family's own default
    assert {("synnet", "synnet-L2"), ("synnet", "synnet-wL2"), ("LSDN-1+SC", "CDN+SC")} <= \
        {pair for c in default.comparisons for pair in c.pairs}


# Margins over the better of the constant and T1 copied as T2 on each fold's held-out crop: (PSNR dB, SSIM, fraction
# of the lesions' conspicuity kept). Measured over folds 1 / 2 / 3: linear +3.04 / +2.35 / +3.21 dB, +0.289 / +0.370 /
# +0.308 SSIM, keeping 36 / 45 / 34 %; replica +5.30 / +4.00 / +5.10 dB, +0.323 / +0.436 / +0.339, 24 / 58 / 37 %;
# LSDN-1 +0.74 / +1.00 / +2.43 dB, +0.188 / +0.294 / +0.202, 22 / 21 / 18 %. VDN+SC and CDN, two epochs on 3,000
# voxels a subject here, are not gated: CDN on folds 2 and 3 and VDN+SC on fold 3 predict 0 in the whole brain
# (9.6 dB, SSIM 0.01; below the constant), which a gate would refuse. test_patch_families gates them trained longer.
BENCH_MARGINS = {"linear": (1.5, 0.18, 0.2), "replica": (2.5, 0.2, 0.15), "LSDN-1": (0.4, 0.1, 0.1)}


@pytest.fixture(scope="module")
def held_out(mni_crops):
    """patient -> (prepared T1 -> T2 subject as the benchmark scores it, the trivial predictors' scores)."""
    out = {}
    for study in find_studies(mni_crops):
        subject = pipeline.prepare_study(study, ["T1", "T2"], "T2", ["T1", "T2"])
        out[study.id] = subject, trivial_scores(subject, "T2", ["T1"])
    return out


def test_every_fold_of_every_model_is_a_result_file_scored_on_its_held_out_subject(bench, held_out):
    root, _ = bench
    for model in ("linear", "replica", "VDN_SC", "CDN", "LSDN-1"):
        for fold, subject in (("1", "patient07"), ("2", "patient19"), ("3", "patient26")):
            result = json.loads((root / "out" / "runs" / "T1_to_T2" / model / f"fold{fold}.json").read_text())
            assert [r["id"] for r in result["subjects"]] == [subject]
            assert subject not in result["train_subjects"] and len(result["train_subjects"]) == 2
            row = result["subjects"][0]
            assert row["cohort"] == "MS" and "lesion_psnr" in row  # the crops keep the consensus lesion mask
            prepared, trivial = held_out[subject]
            if model not in BENCH_MARGINS:
                continue
            psnr, ssim, conspicuity = BENCH_MARGINS[model]
            assert_beats_trivial(row, prepared, "T2", ["T1"], psnr=psnr, ssim=ssim, conspicuity=conspicuity,
                                 trivial=trivial, label=f"{model} fold {fold} on the {subject} crop")
        timing = json.loads((root / "out" / "runs" / "T1_to_T2" / model / "timing.json").read_text())
        assert timing["repeats"] == 1 and timing["median_seconds"] > 0 and timing["peak_memory_mb"] > 100
        assert timing["load_average_1min"] >= 0 and timing["cores"] >= 1
        # the CPU's vector ISA is part of its name: the same model name covers parts with and without native bfloat16
        capability = torch.backends.cpu.get_cpu_capability()
        assert timing["device"] == result["device"] and timing["device"].startswith("CPU: ")
        assert timing["device"].endswith(capability + (" + native bfloat16" if native_bfloat16(torch.device("cpu"))
                                                       else ""))
        assert len(list((root / "out" / "slices" / "T1_to_T2" / model).glob("*.npz"))) == 1  # one per cohort


def test_report_numbers_are_the_means_of_the_result_files(bench):
    root, _ = bench
    summary = json.loads((root / "docs" / "benchmarks.json").read_text())
    task = summary["tasks"]["T1->T2"]
    runs = root / "out" / "runs" / "T1_to_T2"
    for name, slug in (("linear", "linear"), ("LSDN-1", "LSDN-1")):
        psnr = [json.loads((runs / slug / f"fold{f}.json").read_text())["subjects"][0]["psnr"] for f in "123"]
        assert task["models"][name]["summary"]["pooled"]["psnr"]["mean"] == pytest.approx(np.mean(psnr))
        assert task["models"][name]["summary"]["pooled"]["psnr"]["sd"] == pytest.approx(np.std(psnr, ddof=1))
    best = task["best_baseline"]
    assert best in ("linear", "replica")
    assert task["models"][best]["summary"]["pooled"]["psnr"]["mean"] == max(
        task["models"][b]["summary"]["pooled"]["psnr"]["mean"] for b in ("linear", "replica"))
    report = (root / "docs" / "benchmarks.md").read_text()
    # lesions first: each task's section opens with the lesion table, then the whole-brain table
    lesion_row, lsdn = [line for line in report.splitlines() if line.startswith("| LSDN-1 |")][:2]
    assert report.index("| model | lesion subjects |") < report.index("| model | n | PSNR (dB) |")
    kept = [json.loads((runs / "LSDN-1" / f"fold{f}.json").read_text())["subjects"][0]["lesion_conspicuity_kept"]
            for f in "123"]
    assert lesion_row.startswith("| LSDN-1 | 3 | ") and f"| {np.median(kept):.2f} |" in lesion_row
    psnr = [json.loads((runs / "LSDN-1" / f"fold{f}.json").read_text())["subjects"][0]["psnr"] for f in "123"]
    other = [json.loads((runs / best / f"fold{f}.json").read_text())["subjects"][0]["psnr"] for f in "123"]
    test = paired_ttest(psnr, other)
    assert f"{np.mean(psnr):.2f} ± {np.std(psnr, ddof=1):.2f}" in lsdn
    assert f"{test['mean_difference']:+.2f}" in lsdn and f"p={test['p']:.2g}" in lsdn
    assert "ShrinkConnect" in report and "| VDN+SC |" in report and "Load average (1 min)" in report
    assert "LSDN > CDN > VDN in SNR:" in report
    lsdn_snr = [json.loads((runs / "LSDN-1" / f"fold{f}.json").read_text())["subjects"][0]["snr"] for f in "123"]
    cdn_snr = [json.loads((runs / "CDN" / f"fold{f}.json").read_text())["subjects"][0]["snr"] for f in "123"]
    claim = paired_ttest(lsdn_snr, cdn_snr)
    line = next(x for x in report.splitlines() if x.startswith("- SNR LSDN-1 "))
    assert f"difference {claim['mean_difference']:+.2f} dB, p = {claim['p']:.2g}" in line
    assert ("does not hold" in line) == (claim["mean_difference"] <= 0)
    assert any(x.startswith("- SSIM CDN ") and " vs VDN+SC " in x for x in report.splitlines())
    for figure in ("T1_to_T2_montage.png", "T1_to_T2_boxplots.png"):
        path = root / "docs" / "figures" / "benchmark" / figure
        assert path.stat().st_size > 10_000 and f"figures/benchmark/{figure}" in report


def test_data_set_table_averages_each_sets_paired_differences_to_the_baseline():
    """Two data sets: each cell is the mean over that set's subjects of model minus baseline, on the subjects both
    were scored on (n given where it falls short of the set's); one data set gives no table."""
    def rows(values):
        return [{"id": i, "psnr": p, "ssim": q} for i, (p, q) in values.items()]

    forest = {"rows": rows({"a/x/s1": (20.0, 0.60), "a/x/s2": (22.0, 0.70), "a/y/s3": (18.0, 0.50)})}
    net = {"rows": rows({"a/x/s1": (21.0, 0.62), "a/x/s2": (21.0, 0.74), "a/y/s3": (15.5, 0.45)})}
    partial = {"rows": rows({"a/x/s1": (19.0, 0.58)})}
    lines = data_set_table({"forest": forest, "net": net, "partial": partial}, "forest")
    assert lines[0] == "| model | a/x (n=2) | a/y (n=1) |"
    assert lines[2] == "| net | +0.00 / +0.030 | -2.50 / -0.050 |"
    assert lines[3] == "| partial | -1.00 / -0.020 (n=1) | – |"
    assert len(lines) == 4
    one_set = {"rows": rows({"a/x/s1": (20.0, 0.6)})}
    assert data_set_table({"forest": one_set, "net": one_set}, "forest") == []


def test_run_folds_trains_only_those_folds(bench, tmp_path, capsys):
    root, args = bench
    out = tmp_path / "out"
    only = [*args[:4], str(out), *args[5:], "--models", "linear", "--run-folds", "2", "--timing-repeats", "0"]
    assert main(only) == 0
    assert sorted(p.name for p in (out / "runs" / "T1_to_T2" / "linear").iterdir()) == ["fold2.json"]
    assert main([*only[:-4], "--run-folds", "4"]) == 2
    assert "no fold 4; folds are 1, 2, 3" in capsys.readouterr().err


def test_timing_weights_retime_a_model_with_another_checkpoint_of_its_network(bench, tmp_path, capsys):
    """--timing-weights replaces a model's timing with one of the named checkpoint and the report names it; a
    checkpoint of another family is refused."""
    root, args = bench
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    report = tmp_path / "benchmarks.md"
    weights = out / "checkpoints" / "T1_to_T2" / "linear" / "fold2.pt"
    retime = ["benchmark", "--studies", args[2], "--out", str(out), "--plan", args[6], "--folds", args[8],
              "--models", "linear", "--timing-repeats", "1", "--report", str(report), "--quiet"]
    assert main([*retime, "--timing-weights", f"linear={weights}"]) == 0
    timing = json.loads((out / "runs" / "T1_to_T2" / "linear" / "timing.json").read_text())
    assert timing["weights"] == str(weights) and timing["repeats"] == 1 and timing["median_seconds"] > 0
    assert f"instead of the fold-1 weights: linear ({weights})." in report.read_text()
    replica = out / "checkpoints" / "T1_to_T2" / "replica" / "fold2.pt"
    assert main([*retime, "--timing-weights", f"linear={replica}"]) == 2
    assert "a replica T1->T2 checkpoint cannot time linear (linear) on T1->T2" in capsys.readouterr().err


def test_a_second_run_resumes_without_retraining(bench, capsys):
    root, args = bench
    files = sorted((root / "out" / "runs").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in files]
    assert main(args) == 0
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert "LSDN-1" in capsys.readouterr().out


def test_report_from_result_files_alone_keeps_the_montage(bench, tmp_path):
    """A clone holds the result files and figures, not the slices of the data: the report still links the montage
    made when the folds ran, and its numbers stay the same."""
    import shutil

    root, args = bench
    out = tmp_path / "out"
    shutil.copytree(root / "out" / "runs", out / "runs")
    report = root / "docs" / "benchmarks.md"
    before = report.read_text()
    montage = root / "docs" / "figures" / "benchmark" / "T1_to_T2_montage.png"
    made = montage.read_bytes()
    rebuilt = [*args[:4], str(out), *args[5:], "--report-only"]
    assert main(rebuilt) == 0
    after = report.read_text()
    assert montage.read_bytes() == made and "figures/benchmark/T1_to_T2_montage.png" in after
    strip = lambda text: [line for line in text.splitlines() if not line.startswith("Generated")]  # noqa: E731
    assert strip(after) == strip(before)
    # slices of one model only (a later run added it): the complete montage is not replaced by a one-model one
    shutil.copytree(root / "out" / "slices" / "T1_to_T2" / "CDN", out / "slices" / "T1_to_T2" / "CDN")
    assert main(rebuilt) == 0
    assert montage.read_bytes() == made


def test_a_model_that_accepts_missing_inputs_is_tested_with_each_subset(mni_crops, tmp_path):
    """multimodal trained on T1+T2 is scored with T1 alone and T2 alone, against itself with both inputs and against
    the same entry trained on T1 alone (the task T1->FLAIR)."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tasks": {"primary": ["T1+T2->FLAIR", "T1->FLAIR"]}, "baselines": [], "models": [
        {"name": "multimodal", "family": "multimodal", "epochs": 1, "subsets": True, "lr": 0.003, "batch_size": 3,
         "hparams": {"max_steps_per_epoch": 1, "crop": 32}}]}))
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"cohorts": {"MS": ["patient"]},
                                 "folds": {"1": ["patient07"], "2": ["patient19"], "3": ["patient26"]}}))
    report = tmp_path / "benchmarks.md"
    assert main(["benchmark", "--studies", str(mni_crops), "--out", str(tmp_path / "out"), "--plan", str(plan),
                 "--folds", str(folds), "--timing-repeats", "0", "--report", str(report), "--quiet"]) == 0
    runs = tmp_path / "out" / "runs"
    fold = json.loads((runs / "T1+T2_to_FLAIR" / "multimodal" / "fold1.json").read_text())
    assert fold["lr"] == fold["training"]["learning_rate"] == 0.003  # the plan's rate replaces the paper's 1e-4
    assert fold["batch_size"] == fold["training"]["batch_size"] == 3
    assert list(fold["subsets"]) == ["T1", "T2"]
    [with_t1] = fold["subsets"]["T1"]
    assert with_t1["id"] == "patient07" and with_t1["psnr"] != fold["subjects"][0]["psnr"]
    assert json.loads((runs / "T1_to_FLAIR" / "multimodal" / "fold1.json").read_text())["subsets"] == {}
    text = report.read_text()
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith(("| T1 |", "| T2 |"))}
    t1 = [json.loads((runs / "T1+T2_to_FLAIR" / "multimodal" / f"fold{f}.json").read_text())["subsets"]["T1"][0]["psnr"]
          for f in "123"]
    dedicated = [json.loads((runs / "T1_to_FLAIR" / "multimodal" / f"fold{f}.json").read_text())["subjects"][0]["psnr"]
                 for f in "123"]
    assert f"{np.mean(t1):.2f} ± {np.std(t1, ddof=1):.2f}" in rows["| T1"]
    assert f"{paired_ttest(t1, dedicated)['mean_difference']:+.2f}" in rows["| T1"]
    assert "not run" in rows["| T2"]  # the plan has no T2->FLAIR task
    assert " fold" not in rows["| T1"]

    # a subset-trained run that finished two folds: named so, and paired on their subjects alone
    (runs / "T1_to_FLAIR" / "multimodal" / "fold3.json").unlink()
    assert main(["benchmark", "--studies", str(mni_crops), "--out", str(tmp_path / "out"), "--plan", str(plan),
                 "--folds", str(folds), "--report", str(report), "--report-only", "--quiet"]) == 0
    [t1_row] = [line for line in report.read_text().splitlines() if line.startswith("| T1 |")]
    assert f"{np.mean(dedicated[:2]):.2f} / " in t1_row and "(2 folds, n=2)" in t1_row
    assert f"{paired_ttest(t1[:2], dedicated[:2])['mean_difference']:+.2f}" in t1_row.split(" | ")[-1]


def test_a_claim_with_a_partial_run_is_checked_on_the_subjects_both_models_were_scored_on():
    joint = [20.0, 21.0, 19.5, 22.0, 20.5, 21.5]
    l2 = [19.0, 20.8, 19.0]
    results = {"synnet": {"complete": True, "folds": [1, 2, 3],
                          "rows": [{"id": f"s{i}", "psnr": v} for i, v in enumerate(joint)]},
               "synnet-L2": {"complete": False, "folds": [1],
                             "rows": [{"id": f"s{i}", "psnr": v} for i, v in enumerate(l2)]}}
    claim = Comparison("joint loss", ("psnr", "ssim"), (("synnet", "synnet-L2"), ("synnet", "synnet-wL2")))
    [line] = comparison_lines(results, claim)  # no SSIM rows, no synnet-wL2 results
    test = paired_ttest(joint[:3], l2)
    assert line == (f"- PSNR synnet {np.mean(joint[:3]):.2f} dB vs synnet-L2 {np.mean(l2):.2f} dB (fold 1 only): "
                    f"holds (difference {test['mean_difference']:+.2f} dB, p = {test['p']:.2g}, not significant, "
                    "n = 3).")


def test_the_readme_table_gives_each_chosen_entry_on_the_folds_and_says_what_is_not_measured():
    def model(psnr, n, complete=True):
        return {"complete": complete, "folds": ["1", "2", "3"] if complete else ["2", "3"],
                "summary": {"pooled": {"psnr": {"mean": psnr, "n": n}, "ssim": {"mean": 0.5}}}}

    first, second = README_ROWS[0][0], README_ROWS[1][0]
    summary = {"tasks": {README_TASKS[0]: {"models": {first: model(21.0, 18), second: model(19.5, 13, False)}},
                         README_TASKS[1]: {"models": {first: model(18.0, 18)}}},
               "left_out_cohorts": {first: "20.00 / 0.500 (n=4)"}}
    head, _, *rows = readme_table(summary)
    assert head == f"| model | benchmark entry | {README_TASKS[0]} on the folds | {README_TASKS[1]} on the folds | " \
                   "left-out cohorts |"
    assert rows[0] == f"| {README_ROWS[0][1]} | `{first}` | 21.00 / 0.500 (n=18) | 18.00 / 0.500 (n=18) | " \
                      "20.00 / 0.500 (n=4) |"
    assert rows[1] == f"| {README_ROWS[1][1]} | `{second}` | 19.50 / 0.500 (n=13), 2 of 3 folds | not yet measured | " \
                      "not yet measured |"
    assert len(rows) == len(README_ROWS)


def test_peak_memory_of_a_timing_process_is_its_own_not_its_parents():
    import subprocess
    import sys

    code = "from benchmarks.timing import peak_resident_kib; print(peak_resident_kib())"

    def child_peak_kib() -> int:
        return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)

    alone = child_peak_kib()
    ballast = np.ones(1024 * 2**20, np.uint8)  # the parent's resident set grows by 1 GB
    beside_a_large_parent = child_peak_kib()
    assert ballast.sum() == ballast.size
    assert beside_a_large_parent < alone + 200 * 1024, (alone, beside_a_large_parent)


def test_an_entry_with_several_seeds_is_scored_as_the_mean_of_its_members(mni_crops, tmp_path, capsys):
    """seeds [0, 1]: two forests a fold, each saved with its seed; the fold's scores are those of the mean of the two
    predictions. A saved member is used again when it is that training, and refused when it is not."""
    forest = {"n_estimators": 4, "max_samples": 6000}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tasks": {"primary": ["T1->T2"]}, "baselines": [], "models": [
        {"name": "replica", "family": "replica", "hparams": forest},
        {"name": "replica-x2", "family": "replica", "seeds": [0, 1], "hparams": forest}]}))
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"cohorts": {"MS": ["patient"]},
                                 "folds": {"1": ["patient07"], "2": ["patient19"], "3": ["patient26"]}}))
    out = tmp_path / "out"
    args = ["benchmark", "--studies", str(mni_crops), "--out", str(out), "--plan", str(plan), "--folds", str(folds),
            "--timing-repeats", "0", "--quiet"]
    assert main(args) == 0
    saved = out / "checkpoints" / "T1_to_T2" / "replica-x2"
    assert sorted(p.name for p in saved.iterdir()) == [f"fold{f}-seed{s}.pt" for f in "123" for s in (0, 1)]
    result = out / "runs" / "T1_to_T2" / "replica-x2" / "fold1.json"
    fold = json.loads(result.read_text())
    members = fold["training"]["members"]
    assert fold["seeds"] == [0, 1] and [m["seed"] for m in members] == [0, 1]
    assert fold["train_seconds"] == pytest.approx(sum(m["seconds"] for m in members), abs=0.11)

    checkpoints = [load_checkpoint(saved / f"fold1-seed{s}.pt") for s in (0, 1)]
    [study] = [s for s in find_studies(mni_crops) if s.id.endswith("patient07")]
    subject = pipeline.prepare_study(study, ["T1", "T2"], "T2", ["T1", "T2"])
    predictions = [np.clip(c.build().predict(subject, "T2"), 0, None) for c in checkpoints]
    assert np.abs(predictions[0] - predictions[1]).max() > 0.01  # the seeds grew different forests
    expected = pipeline.score_subject(np.mean(predictions, axis=0), subject, "T2")
    [row] = fold["subjects"]
    assert row["psnr"] == pytest.approx(expected["psnr"], abs=1e-4)
    assert row["ssim"] == pytest.approx(expected["ssim"], abs=1e-4)
    single = json.loads((out / "runs" / "T1_to_T2" / "replica" / "fold1.json").read_text())
    assert single["training"]["seed"] == 0 and single["subjects"][0]["psnr"] != row["psnr"]

    # the single-seed entry's fold checkpoint is the same training as the seed-0 member: used again, not retrained
    result.unlink()
    shutil.copy(out / "checkpoints" / "T1_to_T2" / "replica" / "fold1.pt", saved / "fold1-seed0.pt")
    stamps = {p.name: p.stat().st_mtime_ns for p in saved.iterdir()}
    assert main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in saved.iterdir()} == stamps
    assert json.loads(result.read_text())["subjects"][0]["psnr"] == pytest.approx(row["psnr"], abs=1e-4)

    # a member saved in the wrong slot is refused, naming the file and what differs
    (out / "runs" / "T1_to_T2" / "replica-x2" / "fold2.json").unlink()
    shutil.copy(saved / "fold2-seed0.pt", saved / "fold2-seed1.pt")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "fold2-seed1.pt: not replica-x2's training of this fold and seed (seed differ: 0 instead of 1)" in err
    with pytest.raises(ValueError, match="an ensemble needs checkpoints of one family, task"):
        pipeline.evaluate([checkpoints[0], dataclasses.replace(checkpoints[1], inputs=["T1C"])], [study], "T2")


def test_an_entry_that_finishes_another_recalibrates_its_checkpoints_without_training_again(mni_crops, tmp_path):
    """cae3d's finishing step (precise_bn): the finishing entry's fold checkpoint is the base entry's with every weight
    unchanged and new batch-norm statistics, its record the base's training plus the step; its scores are those of
    the finished weights."""
    cae = {"features": 8, "tile": 16, "max_steps_per_epoch": 2, "bn_momentum": 0.01, "input_noise": 0.1}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tasks": {"primary": ["T1->T2"]}, "baselines": [], "models": [
        {"name": "cae", "family": "cae3d", "epochs": 1, "batch_size": 4, "hparams": cae},
        {"name": "cae-precise-bn", "finishes": "cae", "hparams": {"precise_bn": 2}}]}))
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"cohorts": {"MS": ["patient"]},
                                 "folds": {"1": ["patient07"], "2": ["patient19"], "3": ["patient26"]}}))
    out = tmp_path / "out"
    assert main(["benchmark", "--studies", str(mni_crops), "--out", str(out), "--plan", str(plan), "--folds",
                 str(folds), "--run-folds", "1", "--timing-repeats", "0", "--quiet"]) == 0
    saved = out / "checkpoints" / "T1_to_T2"
    base, finished = (load_checkpoint(saved / name / "fold1.pt") for name in ("cae", "cae-precise-bn"))
    assert finished.hparams == {**base.hparams, "precise_bn": 2}
    assert finished.training["precise_bn"]["batches"] == 2
    assert finished.training["history"] == base.training["history"]
    assert finished.training["seconds"] >= base.training["seconds"]
    for key, value in base.state.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(finished.state[key], value) != ("running_" in key), key

    fold = json.loads((out / "runs" / "T1_to_T2" / "cae-precise-bn" / "fold1.json").read_text())
    assert fold["hparams"]["precise_bn"] == 2 and fold["epochs"] == 1
    [study] = [s for s in find_studies(mni_crops) if s.id.endswith("patient07")]
    subject = pipeline.prepare_study(study, ["T1", "T2"], "T2", ["T1", "T2"])
    for checkpoint, name in ((finished, "cae-precise-bn"), (base, "cae")):
        expected = pipeline.score_subject(np.clip(checkpoint.build().predict(subject, "T2"), 0, None), subject, "T2")
        [row] = json.loads((out / "runs" / "T1_to_T2" / name / "fold1.json").read_text())["subjects"]
        assert row["psnr"] == pytest.approx(expected["psnr"], abs=1e-4)

    with pytest.raises(ValueError, match="ssim_weight: not a finishing hyperparameter of cae3d"):
        pipeline.finish(base, [study], hparams={"ssim_weight": 0.1})
    with pytest.raises(ValueError, match="finish it on the studies it trained on"):
        pipeline.finish(base, [study], hparams={"precise_bn": 2})
    plan.write_text(json.dumps({"tasks": {"primary": ["T1->T2"]}, "models": [
        {"name": "cae", "family": "cae3d", "hparams": cae},
        {"name": "x", "finishes": "cae", "hparams": {"input_noise": 0.0}}]}))
    with pytest.raises(ValueError, match="x: input_noise not a finishing hyperparameter of cae3d"):
        Plan.load(plan)
    plan.write_text(json.dumps({"tasks": {"primary": ["T1->T2"]}, "models": [
        {"name": "x", "finishes": "cae", "hparams": {"precise_bn": 2}}]}))
    with pytest.raises(ValueError, match="x: finishes 'cae', which is not an earlier entry"):
        Plan.load(plan)
