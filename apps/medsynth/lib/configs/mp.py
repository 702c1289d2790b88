"""The `mp` family: served checkpoints and retraining (docs/lsdn_and_baselines.md, model/README.md)."""
from lib.family_config import SynthesisTaskConfig


class ModalityPropagation(SynthesisTaskConfig):
    family = "mp"
    description = "MedSynth mp: modality propagation, nearest atlas patches in a local search window (Ye et al. 2013)"
