"""Model families. Importing this package registers every family."""
from .base import SynthesisModel, TrainSettings, create, families, register
from . import linear  # noqa: F401  (registers the family)

__all__ = ["SynthesisModel", "TrainSettings", "create", "families", "register"]
