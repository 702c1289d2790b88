"""The `vdn` family: served checkpoints and retraining (docs/lsdn_and_baselines.md, model/README.md)."""
from lib.family_config import SynthesisTaskConfig


class VDN(SynthesisTaskConfig):
    family = "vdn"
    description = "MedSynth vdn: vanilla deep network on 3x3x3 intensity patches, the LSDN paper's baseline"
