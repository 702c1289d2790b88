"""ShrinkConnect (Nguyen et al., MICCAI 2015, Sect. 3): drop hidden nodes whose responses are linear combinations of a
few kept ones, found by simultaneous orthogonal matching pursuit, and fold the combinations into the next layer."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medsynth_app.networks.lsdn import LocationSensitiveNet, Network, loss, predict, responses


def somp(dictionary: Tensor, signals: Tensor, n_atoms: int) -> tuple[list[int], Tensor]:
    """Simultaneous orthogonal matching pursuit (Tropp, Gilbert & Strauss 2005).

    Greedily picks `n_atoms` columns of `dictionary` (N, M) whose span best approximates every column of `signals`
    (N, L): each step takes the atom with the largest sum over signals of absolute correlations (atoms normalised) with
    the current residuals, then projects all signals on the atoms picked so far. Returns the picked indices in order
    and the least-squares coefficients C (n_atoms, L), signals ~ dictionary[:, picked] @ C.
    Works on the Gram matrices in float64, so the cost does not grow with N after one pass.
    """
    if not 0 < n_atoms <= dictionary.shape[1]:
        raise ValueError(f"cannot pick {n_atoms} atoms out of {dictionary.shape[1]}")
    atoms, signals = dictionary.double(), signals.double()
    gram, cross = atoms.T @ atoms, atoms.T @ signals
    norms = gram.diagonal().sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    correlation = cross
    picked: list[int] = []
    for _ in range(n_atoms):
        score = correlation.abs().sum(1) / norms
        score[picked] = -torch.inf
        picked.append(int(score.argmax()))
        # gelsd gives the minimum-norm solution when picked responses are (numerically) collinear.
        coefficients = torch.linalg.lstsq(gram[picked][:, picked], cross[picked], driver="gelsd").solution
        correlation = cross - gram[:, picked] @ coefficients
    return picked, coefficients


@dataclass(frozen=True)
class ShrinkReport:
    """Outcome of `shrink_connect`: errors are eq. (1) on the training samples; `sweep` lists (fraction, sizes, error)
    for every fraction tried; `fraction` is None when no shrunk network stayed within the tolerance."""

    sizes_before: tuple[int, ...]
    sizes_after: tuple[int, ...]
    error_before: float
    error_after: float
    fraction: float | None
    sweep: tuple[tuple[float, tuple[int, ...], float], ...]


def _linear(weight: Tensor, bias: Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


@torch.no_grad()
def shrink(net: Network, s: Tensor, x: Tensor | None, fraction: float | Sequence[float]) -> Network:
    """Copy of `net` with every hidden layer k reduced to T(k) = max(1, round(fraction * p_k)) nodes (eqs. 10-12).
    `fraction` may also be one fraction per hidden layer (1.0 keeps a layer whole).

    Layers are shrunk in order k = 2, ..., K-1, each on the responses of the network already shrunk below it, so A(k)
    also absorbs the approximation error of the lower layers. F(k), b(k) keep the rows in I(k) (and the latent
    coordinates in I(2)); F(k+1) <- F(k+1) A(k)[:, I(k)]; b(k+1) is unchanged, as in eq. (12).
    """
    small = copy.deepcopy(net)
    n_hidden = len(small.layers) - 1
    fractions = [float(fraction)] * n_hidden if isinstance(fraction, (int, float)) else [float(f) for f in fraction]
    if len(fractions) != n_hidden:
        raise ValueError(f"{len(fractions)} fractions for {n_hidden} hidden layers")
    for j in range(n_hidden):
        if fractions[j] >= 1:
            continue
        h = responses(small, s, x)[j]
        keep, coefficients = somp(h, h, max(1, round(fractions[j] * h.shape[1])))
        layer, above = small.layers[j], small.layers[j + 1]
        small.layers[j] = _linear(layer.weight[keep], layer.bias[keep])
        small.layers[j + 1] = _linear(above.weight @ coefficients.T.to(above.weight.dtype), above.bias)
        if j == 0 and isinstance(small, LocationSensitiveNet):
            small.centres = nn.Parameter(small.centres[keep].clone())
    return small


@torch.no_grad()
def shrink_connect(net: Network, s: Tensor, x: Tensor | None, t: Tensor,
                   fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                   tolerance: float = 0.02) -> tuple[Network, ShrinkReport]:
    """Sweep T(k) as a fraction of every hidden layer and keep the smallest network whose training error (eq. 1, on
    s, x, t with t scaled like the training targets) exceeds the original's by at most `tolerance`, relative (Sect. 3).
    Returns an unchanged copy when no fraction qualifies. The 10 epochs of retraining are the caller's (`train_lsdn`).
    """
    error_before = float(loss(predict(net, s, x), t))
    sweep = []
    for fraction in sorted(fractions):
        candidate = shrink(net, s, x, fraction)
        error = float(loss(predict(candidate, s, x), t))
        sweep.append((fraction, candidate.sizes, error))
        if error <= (1 + tolerance) * error_before:
            return candidate, ShrinkReport(net.sizes, candidate.sizes, error_before, error, fraction, tuple(sweep))
    return copy.deepcopy(net), ShrinkReport(net.sizes, net.sizes, error_before, error_before, None, tuple(sweep))
