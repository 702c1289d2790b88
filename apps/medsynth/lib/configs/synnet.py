"""The `synnet` family: served checkpoints and retraining (docs/deep_models.md, model/README.md)."""
from lib.family_config import SynthesisTaskConfig


class SynNet(SynthesisTaskConfig):
    family = "synnet"
    description = "MedSynth synnet: U-Net with max-unpooling, SISO/MISO/MIMO, joint weighted-L2 + SSIM + TV loss"
