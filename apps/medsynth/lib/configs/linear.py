"""The `linear` family: per-voxel polynomial least squares on multi-scale features (see model/README.md)."""
from lib.family_config import SynthesisTaskConfig


class Linear(SynthesisTaskConfig):
    family = "linear"
    description = ("MedSynth linear: per-voxel quadratic least squares on normalised intensities and their "
                   "Gaussian-smoothed versions; a floor, not a recommendation")
