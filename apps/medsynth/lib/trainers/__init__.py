"""MONAI Label train tasks: one per model family (lib.family_config.SynthesisTaskConfig.trainer)."""
from .synthesis import SynthesisTrainTask, TrainRequestError

__all__ = ["SynthesisTrainTask", "TrainRequestError"]
