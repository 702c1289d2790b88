"""The `cae3d` family: served checkpoints and retraining (docs/deep_models.md, model/README.md)."""
from lib.family_config import SynthesisTaskConfig


class CAE3D(SynthesisTaskConfig):
    family = "cae3d"
    description = ("MedSynth cae3d: 3-D convolutional autoencoder on valid-convolution patches (Klingelhoefer and "
                   "Rousseau)")
