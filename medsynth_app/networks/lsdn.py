"""Location-sensitive deep network (LSDN) and the vanilla baselines VDN/CDN of Nguyen, Zhou & Vemulapalli (MICCAI 2015).

Every layer, the output layer included, is a sigmoid (eq. 4; eq. 6 differentiates gamma at layer K), so targets must
lie in (0, 1): map them with `TargetScaling` before `train_lsdn` and map predictions back with `TargetScaling.decode`.
Spatial coordinates are expected in the normalised box [-1, 1]^3 (`medsynth_app.patches.normalised_coordinates`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


def _sigmoid_layers(widths: Sequence[int]) -> nn.ModuleList:
    """Linear layers for sigmoid units: Glorot-uniform weights scaled by 4 (Glorot & Bengio 2010), zero biases.

    The paper gives no initialisation; with PyTorch's default (+-1/sqrt(fan_in)) the sigmoid units start almost
    linear and SGD at lr 0.25 leaves the output near the mean for many epochs.
    """
    layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight, gain=4.0)
        nn.init.zeros_(layer.bias)
    return layers


class LocationSensitiveNet(nn.Module):
    """LSDN [p_s + p_x, p_2, ..., p_K]: h2 = sigmoid(F2 s + b2) * 2 sigmoid(-||x - x_i||^2 / sigma^2) (eqs. 2-3),
    h_k = sigmoid(F_k h_{k-1} + b_k) for k >= 3 (eq. 4).

    `layers[0]` holds (F2, b2) acting on the intensity feature s of dimension sizes[0] - n_coords; `centres` holds the
    learned latent coordinates x_i, one row per layer-2 node, initialised uniformly in [-1, 1]^n_coords (call
    `place_centres_on` to start them on training coordinates instead).
    """

    def __init__(self, sizes: Sequence[int] = (30, 200, 20, 1), n_coords: int = 3, sigma: float = 0.5) -> None:
        super().__init__()
        if len(sizes) < 3 or sizes[0] <= n_coords:
            raise ValueError(f"LSDN sizes {tuple(sizes)}: need an input wider than the {n_coords} coordinates "
                             "and at least one hidden layer")
        self.n_coords = n_coords
        self.sigma = sigma
        widths = [sizes[0] - n_coords, *sizes[1:]]
        self.layers = _sigmoid_layers(widths)
        self.centres = nn.Parameter(torch.empty(sizes[1], n_coords).uniform_(-1.0, 1.0))

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.layers[0].in_features + self.n_coords, *(layer.out_features for layer in self.layers))

    def place_centres_on(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Start the latent coordinates on randomly drawn training coordinates x (N, n_coords), so no node begins
        outside the brain where it would get almost no gradient."""
        pick = torch.randint(len(x), (len(self.centres),), generator=generator)
        with torch.no_grad():
            self.centres.copy_(x[pick])

    def spatial(self, x: Tensor) -> Tensor:
        """Spatial responses varsigma(x) (eq. 3), shape (N, p_2)."""
        squared = (x * x).sum(1, keepdim=True) - 2 * x @ self.centres.T + (self.centres * self.centres).sum(1)
        return 2 * torch.sigmoid(-squared.clamp_min(0) / self.sigma**2)

    def responses(self, s: Tensor, x: Tensor) -> list[Tensor]:
        """Responses h^(2), ..., h^(K), each (N, p_k): the transposed H^(k) of eq. (11); the last is the output."""
        h = torch.sigmoid(self.layers[0](s)) * self.spatial(x)
        hidden = [h]
        for layer in self.layers[1:]:
            h = torch.sigmoid(layer(h))
            hidden.append(h)
        return hidden

    def forward(self, s: Tensor, x: Tensor) -> Tensor:
        """psi(s, x), shape (N, p_K), in (0, 1)."""
        return self.responses(s, x)[-1]


class VanillaDeepNet(nn.Module):
    """Sigmoid multi-layer network: VDN [27-400-40-1] on intensities, CDN [30-400-40-1] on intensities concatenated
    with coordinates by the caller (Sect. 4)."""

    def __init__(self, sizes: Sequence[int] = (27, 400, 40, 1)) -> None:
        super().__init__()
        if len(sizes) < 3:
            raise ValueError(f"network sizes {tuple(sizes)} need at least one hidden layer")
        self.layers = _sigmoid_layers(sizes)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.layers[0].in_features, *(layer.out_features for layer in self.layers))

    def responses(self, features: Tensor) -> list[Tensor]:
        """Responses h^(2), ..., h^(K), each (N, p_k); the last is the output."""
        hidden = []
        h = features
        for layer in self.layers:
            h = torch.sigmoid(layer(h))
            hidden.append(h)
        return hidden

    def forward(self, features: Tensor) -> Tensor:
        return self.responses(features)[-1]


Network = LocationSensitiveNet | VanillaDeepNet


def responses(net: Network, s: Tensor, x: Tensor | None) -> list[Tensor]:
    """Per-layer responses of either network; x is None for VDN/CDN."""
    return net.responses(s) if x is None else net.responses(s, x)


@dataclass(frozen=True)
class TargetScaling:
    """Affine map of target intensities [low, high] onto [margin, 1 - margin], inside the range of the sigmoid output
    layer (eq. 6) and away from its flat ends."""

    low: float
    high: float
    margin: float = 0.1

    @classmethod
    def fit(cls, t: Tensor | np.ndarray, margin: float = 0.1) -> TargetScaling:
        low, high = float(t.min()), float(t.max())
        if not high > low:
            raise ValueError("constant targets: nothing to learn")
        return cls(low, high, margin)

    def encode(self, t: Tensor | np.ndarray) -> Tensor | np.ndarray:
        return self.margin + (1 - 2 * self.margin) * (t - self.low) / (self.high - self.low)

    def decode(self, y: Tensor | np.ndarray) -> Tensor | np.ndarray:
        return self.low + (y - self.margin) * (self.high - self.low) / (1 - 2 * self.margin)


def loss(prediction: Tensor, t: Tensor) -> Tensor:
    """E = 1/(2N) sum_n ||psi(s_n, x_n) - t_n||^2 (eq. 1)."""
    return 0.5 * (prediction - t.reshape(prediction.shape)).square().sum(1).mean()


def train_lsdn(net: Network, s: Tensor, x: Tensor | None, t: Tensor, epochs: int, lr: float = 0.25,
               decay: float = 0.99, batch_size: int = 100, seed: int = 0) -> list[float]:
    """Mini-batch SGD on eq. (1) (Sect. 2.1): learning rate 0.25, multiplied by 0.99 after every epoch. x is None for
    VDN/CDN. t must already be scaled into (0, 1) (`TargetScaling`). Returns the mean training loss of each epoch."""
    optimiser = torch.optim.SGD(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimiser, decay)
    generator = torch.Generator().manual_seed(seed)
    t = t.reshape(len(t), -1)
    history = []
    net.train()
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(s), generator=generator).split(batch_size):
            optimiser.zero_grad()
            value = loss(net(s[batch]) if x is None else net(s[batch], x[batch]), t[batch])
            value.backward()
            optimiser.step()
            total += value.item() * len(batch)
        schedule.step()
        history.append(total / len(s))
    return history


@torch.no_grad()
def predict(net: Network, s: Tensor | np.ndarray, x: Tensor | np.ndarray | None = None,
            batch_size: int = 8192) -> Tensor:
    """Network output (N, p_K) in (0, 1), computed in batches without autograd; x is None for VDN/CDN.

    Batches of a few thousand voxels keep the (batch, p_2) intermediates in cache (docs/deep_models.md).
    """
    dtype = net.layers[0].weight.dtype
    s = torch.as_tensor(s, dtype=dtype)
    x = None if x is None else torch.as_tensor(x, dtype=dtype)
    net.eval()
    return torch.cat([net(s[i:i + batch_size]) if x is None else net(s[i:i + batch_size], x[i:i + batch_size])
                      for i in range(0, len(s), batch_size)])
