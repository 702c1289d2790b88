"""The `cdn` family: served checkpoints and retraining (docs/lsdn_and_baselines.md, model/README.md)."""
from lib.family_config import SynthesisTaskConfig


class CDN(SynthesisTaskConfig):
    family = "cdn"
    description = "MedSynth cdn: deep network on 3x3x3 patches concatenated with coordinates, the LSDN paper's baseline"
