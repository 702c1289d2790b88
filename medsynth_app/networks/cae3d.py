"""3-D convolutional autoencoder for T1 -> T2 synthesis (Klingelhoefer & Rousseau, "Convolutional Auto-Encoder for
MRI modality synthesis", shared/papers/conv_autoencoder_klingelhoefer.md).

Unpadded 3x3x3 convolutions crop the volume, so a 38^3 input patch gives a 16^3 output patch (Sec. 3.2). Intensities
are expected divided by three times the mean of the non-zero voxels; the paper trains with Adam and MSE.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

# convolutions before pooling, between pooling and upsampling, after upsampling (Sec. 3.1 and 3.4.2)
LAYOUTS: dict[str, tuple[int, int, int]] = {"base": (3, 3, 2), "deep": (4, 4, 3)}


def _layout(depth: str) -> tuple[int, int, int]:
    if depth not in LAYOUTS:
        raise ValueError(f"unknown depth {depth!r}; expected one of {', '.join(LAYOUTS)}")
    return LAYOUTS[depth]


def _output_side(side: int, depth: str) -> int:
    before, middle, after = _layout(depth)
    pooled = (side - 2 * before) // 2  # each valid 3x3x3 convolution removes 2 voxels; pooling floors
    out = 2 * (pooled - 2 * middle) - 2 * after
    if side - 2 * before < 2 or pooled - 2 * middle < 1 or out < 1:
        raise ValueError(f"input side {side} is too small for the {depth} autoencoder")
    return out


def _input_side(side: int, depth: str) -> int:
    before, middle, after = _layout(depth)
    if side < 2 or side % 2:
        raise ValueError(f"the output side must be even and >= 2 (it leaves an upsampling by 2), got {side}")
    return 2 * ((side + 2 * after) // 2 + 2 * middle) + 2 * before


class ConvAutoencoder3D(nn.Module):
    """Sequential 3-D autoencoder: ``before`` convolutions - 2x2x2 max-pool - ``middle`` convolutions - nearest x2
    upsampling - ``after`` convolutions, with the layouts 3-3-2 ("base", Fig. 8) and 4-4-3 ("deep", Sec. 3.4.2).

    Every convolution is 3x3x3, unpadded, ``features`` filters (32 in the paper; 16 and 48 were also tried, Sec. 3.4.1)
    with ReLU, except the last, which is linear with one output channel. A batch norm precedes every convolution but
    the first (Sec. 3.3); with it the parameter counts match the paper exactly: 168,289 (base), 251,521 (deep), 376,849
    (base with 48 filters). Weights use He initialisation (Sec. 3.3), biases start at zero.

    ``in_channels`` > 1 feeds several co-registered contrasts at once. ``sigmoid_output`` applies the sigmoid that
    Sec. 2.1.1 puts on the last layer (intensities are then bounded to (0, 1)); the default is a linear output.
    ``bn_momentum``: weight of each batch in the batch norms' running statistics (PyTorch's 0.1 by default; the
    paper's library, Keras, keeps a moving average with 0.99, i.e. 0.01 here).
    """

    def __init__(
        self, in_channels: int = 1, depth: str = "base", features: int = 32, sigmoid_output: bool = False,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        before, middle, after = _layout(depth)
        self.depth = depth
        layers: list[nn.Module] = [nn.Conv3d(in_channels, features, 3), nn.ReLU()]
        for index in range(1, before + middle + after):
            if index == before:
                layers.append(nn.MaxPool3d(2))
            elif index == before + middle:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            last = index == before + middle + after - 1
            layers += [nn.BatchNorm3d(features, momentum=bn_momentum), nn.Conv3d(features, 1 if last else features, 3)]
            if not last:
                layers.append(nn.ReLU())
        if sigmoid_output:
            layers.append(nn.Sigmoid())
        self.layers = nn.Sequential(*layers)
        for layer in self.layers:
            if isinstance(layer, nn.Conv3d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    @staticmethod
    def output_size(input_size: int | Sequence[int], depth: str = "base") -> int | tuple[int, ...]:
        """Output side(s) for an input side (or per-axis sizes) of the ``depth`` layout: n - 22 for "base"
        (38 -> 16), n - 30 for "deep" (46 -> 16) when n is even; an odd side loses one more voxel to the pooling."""
        if isinstance(input_size, int):
            return _output_side(input_size, depth)
        return tuple(_output_side(side, depth) for side in input_size)

    @staticmethod
    def input_size_for(output_size: int | Sequence[int], depth: str = "base") -> int | tuple[int, ...]:
        """Smallest input side(s) giving exactly ``output_size`` (which must be even): 16 -> 38 ("base"), 46
        ("deep")."""
        if isinstance(output_size, int):
            return _input_side(output_size, depth)
        return tuple(_input_side(side, depth) for side in output_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5:
            raise ValueError(f"ConvAutoencoder3D expects (B, C, D, H, W), got {tuple(x.shape)}")
        self.output_size(tuple(x.shape[-3:]), self.depth)  # clear error for too-small inputs
        return self.layers(x)
