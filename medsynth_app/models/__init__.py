"""Model families. Importing this package registers every family module found in it."""
import importlib
import pkgutil

from .base import SynthesisModel, TrainSettings, create, families, fine_tunes, finishing_hparams, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SynthesisModel", "TrainSettings", "create", "families", "fine_tunes", "finishing_hparams", "register"]
