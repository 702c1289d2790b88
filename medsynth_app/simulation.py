"""The embedded demo cohort: SIMULATED multi-contrast brain MRI built from real anatomy that nilearn ships.

Anatomy: the ICBM152 2009 grey- and white-matter probability maps and brain mask (bundled with nilearn, no download);
CSF = brain - GM - WM. Each subject gets a smooth random deformation and a global scale, optional white-matter
lesions (with their mask), then spin-echo T1w, T2w, PD, a post-contrast T1w (lesions with shortened T1) and an
inversion-recovery FLAIR from the signal equations below with BrainWeb's 1.5 T tissue parameters
(Kwan, Evans & Pike, IEEE TMI 1999), a multiplicative bias field per contrast and Rician noise. Deterministic by seed.

  spin echo:  S = PD (1 - exp(-TR/T1)) exp(-TE/T2)
  FLAIR:      S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

# (T1 ms, T2 ms, PD): BrainWeb 1.5 T; lesion values are BrainWeb's MS lesion class.
TISSUES = {"CSF": (2569.0, 329.0, 1.0), "GM": (833.0, 83.0, 0.86), "WM": (500.0, 70.0, 0.77),
           "LESION": (752.0, 237.0, 0.76)}
GADOLINIUM_T1 = 300.0  # ms: T1 of enhancing lesion tissue after contrast
SEQUENCES = {  # name: (kind, TR, TE, TI)
    "T1": ("se", 500.0, 15.0, 0.0),
    "T1C": ("se", 500.0, 15.0, 0.0),
    "T2": ("se", 4000.0, 100.0, 0.0),
    "PD": ("se", 4000.0, 15.0, 0.0),
    "FLAIR": ("ir", 9000.0, 120.0, 1780.0),  # TI = T1_CSF ln 2 nulls CSF
}
README = """SIMULATED data -- not acquired from any person.
Made by `medsynth demo-data` from the ICBM152 2009 tissue maps shipped with nilearn, with BrainWeb 1.5 T tissue
parameters, spin-echo / inversion-recovery signal equations, random deformation, bias field and Rician noise.
Seed {seed}, {n} subjects, {spacing} mm voxels. For demonstrations and tests only; never for claims about real data.
"""


def _anatomy(spacing: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    from nilearn import datasets

    resolution = int(round(spacing)) if spacing >= 1 else 1
    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=resolution).get_fdata() > 0.5
    gm = gm_img.get_fdata()
    gm, wm = gm / max(gm.max(), 1e-6), wm / max(wm.max(), 1e-6)
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0, 1), 0.0)
    return {"GM": gm, "WM": wm, "CSF": csf}, brain, gm_img.affine


def _deformation(shape, rng, amplitude_vox: float, smooth_vox: float) -> list[np.ndarray]:
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    scale = 1.0 + rng.uniform(-0.05, 0.05)
    centre = [s / 2 for s in shape]
    coords = []
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), smooth_vox)
        field *= amplitude_vox / max(np.abs(field).max(), 1e-6)
        coords.append(centre[axis] + (grid[axis] - centre[axis]) / scale + field)
    return coords


def _lesions(wm: np.ndarray, rng, count: int, spacing: float) -> np.ndarray:
    lesion = np.zeros(wm.shape, dtype=bool)
    candidates = np.argwhere(wm > 0.9)
    if len(candidates) == 0:
        return lesion
    grid = np.indices(wm.shape, dtype=np.float32)
    for centre in candidates[rng.choice(len(candidates), size=count, replace=False)]:
        radii = rng.uniform(2.0, 6.0, size=3) / spacing
        distance = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
        lesion |= distance <= 1.0
    return lesion & (wm > 0.3)


def _signal(kind: str, tr: float, te: float, ti: float, t1: np.ndarray, t2: float, pd: float) -> np.ndarray:
    if kind == "se":
        return pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2)
    return pd * np.abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def _bias(shape, rng, strength: float = 0.15) -> np.ndarray:
    axes = [np.linspace(-1, 1, s) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    terms = [x, y, z, x * y, y * z, x * z, x**2, y**2, z**2]
    return np.exp(sum(rng.uniform(-strength, strength) * t for t in terms))


def simulate_subject(seed: int, spacing: float = 2.0, n_lesions: int = 6, noise: float = 0.02):
    """Volumes (contrast -> float32 array), brain mask, lesion mask and affine of one simulated subject."""
    rng = np.random.default_rng(seed)
    maps, brain, affine = _anatomy(spacing)
    coords = _deformation(brain.shape, rng, amplitude_vox=3.0 / spacing, smooth_vox=12.0 / spacing)
    warp = {k: ndimage.map_coordinates(v, coords, order=1, mode="constant") for k, v in maps.items()}
    brain = ndimage.map_coordinates(brain.astype(np.float32), coords, order=1) > 0.5
    lesion = _lesions(warp["WM"], rng, n_lesions, spacing) & brain
    enhancing = lesion & (rng.random(brain.shape) < 0.5)
    fractions = {**warp, "LESION": lesion.astype(np.float64)}
    for tissue in ("GM", "WM", "CSF"):
        fractions[tissue] = np.where(lesion, 0.0, fractions[tissue])
    volumes = {}
    for name, (kind, tr, te, ti) in SEQUENCES.items():
        signal = np.zeros(brain.shape)
        for tissue, (t1, t2, pd) in TISSUES.items():
            t1_map = np.full(brain.shape, t1)
            if name == "T1C" and tissue == "LESION":
                t1_map = np.where(enhancing, GADOLINIUM_T1, t1)
            signal += fractions[tissue] * _signal(kind, tr, te, ti, t1_map, t2, pd)
        signal *= brain * _bias(brain.shape, rng)
        sigma = noise * float(np.percentile(signal[brain], 90))
        noisy = np.hypot(signal + rng.normal(0, sigma, brain.shape), rng.normal(0, sigma, brain.shape))
        volumes[name] = (1000.0 * noisy / np.percentile(noisy[brain], 99)).astype(np.float32)
    return volumes, brain, lesion, affine


def simulate_cohort(out: str | Path, n_subjects: int = 4, seed: int = 0, spacing: float = 2.0) -> list[Path]:
    """Write ``n_subjects`` simulated studies (sim01, sim02, ...) with a README saying they are simulated."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.txt").write_text(README.format(seed=seed, n=n_subjects, spacing=spacing))
    folders = []
    for index in range(n_subjects):
        volumes, brain, lesion, affine = simulate_subject(seed * 1000 + index, spacing)
        folder = out / f"sim{index + 1:02d}"
        folder.mkdir(exist_ok=True)
        for name, volume in volumes.items():
            nib.save(nib.Nifti1Image(volume, affine), folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), folder / "brainmask.nii.gz")
        nib.save(nib.Nifti1Image(lesion.astype(np.uint8), affine), folder / "lesion_mask.nii.gz")
        folders.append(folder)
    return folders
