import numpy as np

from medsynth_app.simulation import simulate_subject
from medsynth_app.studies import find_studies


def test_cohort_is_deterministic_and_lists_as_studies(sim_cohort):
    studies = find_studies(sim_cohort)
    assert [s.id for s in studies] == ["sim01", "sim02"]
    assert studies[0].contrasts == ["T1", "T1C", "T2", "PD", "FLAIR"]
    assert studies[0].brain_mask and studies[0].lesion_mask
    assert "SIMULATED" in (sim_cohort / "README.txt").read_text()


def test_contrast_physics():
    volumes, brain, lesion, _ = simulate_subject(seed=3, spacing=3.0)
    again, *_ = simulate_subject(seed=3, spacing=3.0)
    other, *_ = simulate_subject(seed=4, spacing=3.0)
    assert np.array_equal(volumes["T2"], again["T2"]) and not np.array_equal(volumes["T2"], other["T2"])
    assert lesion.any() and brain.sum() > 10 * lesion.sum()
    t1, t2, flair = volumes["T1"], volumes["T2"], volumes["FLAIR"]
    # CSF: dark on T1, bright on T2, nulled on FLAIR; lesions: bright on T2 and FLAIR
    csf = brain & (t2 > np.percentile(t2[brain], 95))
    tissue = brain & ~csf & ~lesion
    assert t1[csf].mean() < t1[tissue].mean()
    assert flair[csf].mean() < 0.6 * flair[tissue].mean()
    assert flair[lesion].mean() > 1.3 * flair[tissue].mean()
    assert (volumes["T1C"][lesion] > volumes["T1"][lesion] * 1.05).mean() > 0.3
