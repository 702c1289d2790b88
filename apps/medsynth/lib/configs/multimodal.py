"""The `multimodal` family: served checkpoints and retraining (docs/deep_models.md, model/README.md)."""
from lib.family_config import SynthesisTaskConfig


class Multimodal(SynthesisTaskConfig):
    family = "multimodal"
    description = ("MedSynth multimodal: per-contrast encoders, latent fusion and shared decoders; any subset of the "
                   "trained inputs (Chartsias et al. 2018)")
