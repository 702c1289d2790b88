"""The `lsdn` family: served checkpoints and retraining (docs/lsdn_and_baselines.md, model/README.md)."""
from lib.family_config import SynthesisTaskConfig


class LSDN(SynthesisTaskConfig):
    family = "lsdn"
    description = ("MedSynth lsdn: location-sensitive deep network on 3x3x3 patches and brain-box coordinates, "
                   "simplified by ShrinkConnect (Nguyen et al. 2015)")
