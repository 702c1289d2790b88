"""The `replica` family: served checkpoints and retraining (docs/lsdn_and_baselines.md, model/README.md)."""
from lib.family_config import SynthesisTaskConfig


class Replica(SynthesisTaskConfig):
    family = "replica"
    description = ("MedSynth replica: extra-trees regression on multi-scale intensity features (REPLICA-style); the "
                   "floor every learned model must beat")
