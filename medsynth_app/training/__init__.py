"""The training engine shared by the deep families (multimodal, synnet, cae3d): datasets of 2-D slices and 3-D
patches built from PreparedSubjects, slice-wise and tiled inference, the training loop (validation with the
EVALUATION.md metrics, early stopping, best weights, resumable partial files, seeds, device selection, mixed
precision on CUDA) and multi-process data-parallel training under torchrun."""
from .datasets import PatchDataset, SliceDataset, brain_slices
from .devices import resolve_device
from .distributed import DistContext
from .engine import seed_everything, train_network
from .partial import load_partial
from .schedule import Schedule
from .inference import predict_slices, predict_tiled

__all__ = ["DistContext", "load_partial", "PatchDataset", "SliceDataset", "brain_slices", "predict_slices",
           "predict_tiled", "resolve_device", "Schedule", "seed_everything", "train_network"]
