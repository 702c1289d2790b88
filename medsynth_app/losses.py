"""Training costs of the deep synthesis networks (`medsynth_app.networks`): the three-component cost of Chartsias et
al. 2018, the SynNet joint loss (edge-weighted L2, SSIM and total variation) and the 3-D autoencoder's MSE with an
optional structural term."""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from monai.metrics.regression import compute_ssim_and_cs
from torch import Tensor, nn

from .networks.multimodal import MultimodalOutput, masked_mean_over_inputs

SYNNET_LOSSES = ("joint", "l2", "weighted_l2")


def _float32(value):
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return {key: _float32(item) for key, item in value.items()}
    return value


def in_float32(cost: Callable) -> Callable:
    """Run a cost method on float32 copies of its prediction and targets with autocast off. Under bfloat16 autocast
    the SSIM's windowed variances (E[x^2] - E[x]^2) and c2's variance cancel to noise in an 8-bit mantissa: a SynNet
    joint loss computed that way reached -inf after 45 steps on real data."""

    @functools.wraps(cost)
    def run(self, prediction, targets, *args, **kwargs):
        reference = targets if isinstance(targets, Tensor) else next(iter(targets.values()), None)
        device_type = reference.device.type if isinstance(reference, Tensor) else "cpu"
        with torch.autocast(device_type, enabled=False):
            return cost(self, _float32(prediction), _float32(targets), *args, **kwargs)

    return run


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).eps)


class MultimodalSynthesisLoss(nn.Module):
    """c_t = w1 c1 + w2 c2 + w3 c3 of Chartsias et al. 2018 (eqs. 2-4 and 7; weights 1 in the paper), on the output
    of `MultimodalSynthesisNet` run with ``decode_individual=True``.

    c1 (eq. 2): sum over the given inputs of the MAE of that input's latent decoded to each output, averaged over the
    outputs. c2 (eq. 3): variance across the individual latents (population variance; 0 for a single input),
    averaged over pixels and channels. c3 (eq. 4): MAE of the fused prediction, averaged over the outputs.
    Only the outputs present in ``targets`` are scored, so a new decoder can be trained alone (Sec. VI-E). The
    optional ``mask`` (B, 1, H, W) restricts every mean to its pixels. The mean over the minibatch replaces eq. 7's sum.

    Incomplete samples (training on studies that lack some contrasts): ``available`` maps a target to a (B,) bool
    tensor of the samples that hold it, and the prediction's ``present`` flags say which samples hold each input. A
    term is then averaged over the samples where its input and its target exist, and c2 runs over each sample's own
    inputs; with every flag True the cost is the one above.

    Beyond the paper, ``ssim_weight`` > 0 adds a term "ssim": 1 - SSIM of the fused prediction, averaged over the
    outputs, the 2-D SSIM of `ssim_map_2d` at each output's range in ``data_ranges``; the mask and the flags select
    the SSIM map's pixels and samples as they select the MAEs'.
    """

    def __init__(self, c1_weight: float = 1.0, c2_weight: float = 1.0, c3_weight: float = 1.0,
                 ssim_weight: float = 0.0, data_ranges: Mapping[str, float] | None = None) -> None:
        super().__init__()
        data_ranges = dict(data_ranges or {})
        if ssim_weight < 0 or any(r <= 0 for r in data_ranges.values()):
            raise ValueError(f"ssim_weight must be >= 0 and data ranges > 0, got {ssim_weight} and {data_ranges}")
        self.weights = {"c1": c1_weight, "c2": c2_weight, "c3": c3_weight}
        if ssim_weight > 0:
            self.weights["ssim"] = float(ssim_weight)
        self.data_ranges = data_ranges

    @in_float32
    def terms(
        self, prediction: MultimodalOutput, targets: Mapping[str, Tensor], mask: Tensor | None = None,
        available: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """The unweighted components {"c1", "c2", "c3"}, and "ssim" when it is weighted."""
        if not targets:
            raise ValueError("no target given")
        unknown = [name for name in targets if name not in prediction["outputs"]]
        if unknown:
            raise ValueError(f"no prediction for target {', '.join(map(repr, unknown))}")
        if not prediction["individual"]:
            raise ValueError("cost c1 needs the individual decodings: run the network with decode_individual=True")
        batch = next(iter(targets.values())).shape[0]
        everyone = torch.ones(batch, dtype=torch.bool, device=next(iter(targets.values())).device)
        has = {out: everyone if available is None or available.get(out) is None else available[out].bool()
               for out in targets}
        present = {name: prediction.get("present", {}).get(name, everyone) for name in prediction["latents"]}
        scored = [out for out in targets if has[out].any()]
        if not scored:
            raise ValueError("no sample holds any of the targets")
        unranged = [name for name in scored if "ssim" in self.weights and name not in self.data_ranges]
        if unranged:
            raise ValueError(f"no SSIM data range for target {', '.join(map(repr, unranged))}")

        def mae(image: Tensor, out: str, samples: Tensor) -> Tensor:
            return _masked_mean((image - targets[out]).abs(), _sample_mask(mask, samples, image))

        c1 = sum(mae(prediction["individual"][name][out], out, present[name] & has[out])
                 for name in prediction["individual"] for out in scored) / len(scored)
        latents = torch.stack(list(prediction["latents"].values()))
        weights = torch.stack(list(present.values())).to(latents.dtype)[:, :, None, None, None]
        mean = masked_mean_over_inputs(latents, weights)
        c2 = _masked_mean(masked_mean_over_inputs((latents - mean).square(), weights), mask)
        c3 = sum(mae(prediction["outputs"][out], out, has[out]) for out in scored) / len(scored)
        terms = {"c1": c1, "c2": c2, "c3": c3}
        if "ssim" in self.weights:
            terms["ssim"] = sum(self._dissimilarity(prediction["outputs"][out], targets[out], self.data_ranges[out],
                                                    mask, has[out]) for out in scored) / len(scored)
        return terms

    @staticmethod
    def _dissimilarity(image: Tensor, target: Tensor, data_range: float, mask: Tensor | None,
                       samples: Tensor) -> Tensor:
        ssim_map = ssim_map_2d(image, target, data_range)
        # the map covers the valid window positions: crop the mask alike
        valid = None if mask is None else mask[..., 5:-5, 5:-5]
        return _masked_mean(1.0 - ssim_map, _sample_mask(valid, samples, ssim_map))

    def forward(
        self, prediction: MultimodalOutput, targets: Mapping[str, Tensor], mask: Tensor | None = None,
        available: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        return sum(self.weights[name] * value
                   for name, value in self.terms(prediction, targets, mask, available).items())


def ssim_map_2d(prediction: Tensor, target: Tensor, data_range: float) -> Tensor:
    """MONAI's SSIM map (`compute_ssim_and_cs`: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of (B, C, H, W)
    images over the valid window positions, (B, C, H - 10, W - 10)."""
    if min(target.shape[-2:]) < 11:
        raise ValueError(f"SSIM uses an 11x11 window: H and W must be >= 11, got {tuple(target.shape[-2:])}")
    ssim_map, _ = compute_ssim_and_cs(prediction, target, spatial_dims=2, kernel_size=(11, 11),
                                      kernel_sigma=(1.5, 1.5), data_range=data_range)
    return ssim_map


def _sample_mask(mask: Tensor | None, samples: Tensor, like: Tensor) -> Tensor | None:
    """``mask`` (B, 1, H, W) limited to the flagged samples; None (every pixel) when every sample is flagged."""
    if bool(samples.all()):
        return mask
    flags = samples.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return flags if mask is None else mask.to(like.dtype) * flags


def edge_weights(target: Tensor, edge_weight: float = 10.0, threshold: float = 0.1) -> Tensor:
    """Pixel weights w(x) = 1 + edge_weight * [x is an edge of the target] of the SynNet weighting scheme (Sec. 3,
    Fig. 3), for a (B, C, H, W) target.

    The paper gives no formula: it boosts "pixels belonging to the edges" of the ground truth to compensate the edge
    imbalance, in the words of ReLayNet's w(x) = 1 + w1 I(|grad l(x)| > 0) (Roy et al. 2017, w1 = 10). For intensity
    images an edge is here a pixel whose Sobel gradient magnitude exceeds ``threshold`` times the image's maximum
    (replicated borders). No gradient flows through the weights.
    """
    if target.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) target, got shape {tuple(target.shape)}")
    batch, channels, height, width = target.shape
    images = target.detach().reshape(batch * channels, 1, height, width)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=images.dtype,
                         device=images.device)
    gradients = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), torch.stack([sobel, sobel.T]).unsqueeze(1))
    magnitude = gradients.square().sum(dim=1, keepdim=True).sqrt()
    edges = magnitude > threshold * magnitude.amax(dim=(-2, -1), keepdim=True)
    return (1.0 + edge_weight * edges.to(images.dtype)).reshape_as(target)


def edge_weighted_l2(
    prediction: Tensor, target: Tensor, edge_weight: float = 10.0, threshold: float = 0.1
) -> Tensor:
    """Edge-weighted squared error, eq. (4) of SynNet: mean over pixels of w(x) (S(x) - S_r(x))^2, w from
    `edge_weights` of the target."""
    if prediction.shape != target.shape:
        raise ValueError(f"shapes differ: prediction {tuple(prediction.shape)}, target {tuple(target.shape)}")
    return (edge_weights(target, edge_weight, threshold) * (prediction - target).square()).mean()


def total_variation(image: Tensor, reduction: str = "mean") -> Tensor:
    """Isotropic total variation of SynNet eqs. (7)-(8): t(i, j) = sqrt(p^2 + q^2) with forward differences
    p = S(i+1, j) - S(i, j), q = S(i, j+1) - S(i, j), taken as 0 beyond the last row/column; summed ("sum", eq. 7)
    or averaged ("mean") over all pixels of the (B, C, H, W) batch."""
    if image.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) image, got shape {tuple(image.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'sum'")
    p = F.pad(image[..., 1:, :] - image[..., :-1, :], (0, 0, 0, 1))
    q = F.pad(image[..., :, 1:] - image[..., :, :-1], (0, 1, 0, 0))
    squared = p.square() + q.square()
    # sqrt has an infinite derivative at 0: evaluate it only where the image is not flat
    flat = squared == 0
    t = torch.where(flat, torch.zeros_like(squared), torch.where(flat, torch.ones_like(squared), squared).sqrt())
    return t.mean() if reduction == "mean" else t.sum()


class SynNetJointLoss(nn.Module):
    """The SynNet training costs compared in its Table 2/4, for (B, C, H, W) predictions and targets.

    kind "l2": mean squared error (eq. 1). "weighted_l2": `edge_weighted_l2` (eq. 4). "joint" (eq. 6):
    ``l2_weight`` x weighted L2 + ``ssim_weight`` x (1 - SSIM) + ``tv_weight`` x TV(prediction), with the paper's
    lambda1 = 10, lambda2 = 5, lambda3 = 0.5. lambda4 = 1e-4 of eq. 6 is weight decay: it belongs to the optimiser
    (SGD, lr 0.01, momentum 0.9, weight_decay 1e-4, batch 32 in the paper), not to this loss.

    SSIM (eq. 3) is MONAI's (`compute_ssim_and_cs`: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid window
    positions only, so H and W must be >= 11), averaged over the SSIM map and channels; ``data_range`` defaults to
    the target batch's max - min. ``weighted_ssim`` weights the SSIM map with the edge weights as eq. (5) writes
    (normalised by the weights' sum so the term stays in [0, 2]); the default is the plain 1 - SSIM. TV is
    `total_variation` averaged over pixels, so its scale matches the per-pixel L2 and SSIM terms.
    """

    def __init__(
        self,
        kind: str = "joint",
        l2_weight: float = 10.0,
        ssim_weight: float = 5.0,
        tv_weight: float = 0.5,
        edge_weight: float = 10.0,
        edge_threshold: float = 0.1,
        data_range: float | None = None,
        weighted_ssim: bool = False,
    ) -> None:
        super().__init__()
        if kind not in SYNNET_LOSSES:
            raise ValueError(f"unknown SynNet loss {kind!r}; expected one of {', '.join(SYNNET_LOSSES)}")
        self.kind = kind
        self.l2_weight, self.ssim_weight, self.tv_weight = l2_weight, ssim_weight, tv_weight
        self.edge_weight, self.edge_threshold = edge_weight, edge_threshold
        self.data_range = data_range
        self.weighted_ssim = weighted_ssim

    def ssim_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """1 - SSIM (eq. 2), or its edge-weighted form (eq. 5) when ``weighted_ssim``."""
        data_range = self.data_range
        if data_range is None:
            data_range = float(target.detach().amax() - target.detach().amin()) or 1.0
        ssim_map = ssim_map_2d(prediction, target, data_range)
        if not self.weighted_ssim:
            return 1.0 - ssim_map.mean()
        # the SSIM map covers the valid window positions: crop the weights alike
        weights = edge_weights(target, self.edge_weight, self.edge_threshold)[..., 5:-5, 5:-5]
        return (weights * (1.0 - ssim_map)).sum() / weights.sum()

    @in_float32
    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        if prediction.shape != target.shape or prediction.ndim != 4:
            raise ValueError(
                f"expected equal (B, C, H, W) shapes, got prediction {tuple(prediction.shape)}, "
                f"target {tuple(target.shape)}"
            )
        if self.kind == "l2":
            return F.mse_loss(prediction, target)
        weighted_l2 = edge_weighted_l2(prediction, target, self.edge_weight, self.edge_threshold)
        if self.kind == "weighted_l2":
            return weighted_l2
        return (
            self.l2_weight * weighted_l2
            + self.ssim_weight * self.ssim_loss(prediction, target)
            + self.tv_weight * total_variation(prediction)
        )


class PatchMSEWithSSIM(nn.Module):
    """MSE + ``ssim_weight`` x mean over channels of (1 - 3-D SSIM), for (B, C, D, H, W) output patches.

    SSIM is MONAI's `SSIMLoss` (11^3 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid window positions: patches
    need >= 11 voxels per side), with one data range per channel (``data_ranges``, in the patches' intensity units),
    the range EVALUATION.md's SSIM takes from each test volume. ``ssim_weight`` 0 is the plain MSE (ranges unused)."""

    def __init__(self, data_ranges: Sequence[float], ssim_weight: float = 0.0) -> None:
        super().__init__()
        if ssim_weight < 0 or (ssim_weight > 0 and not all(r > 0 for r in data_ranges)):
            raise ValueError(f"ssim_weight must be >= 0 and data ranges > 0, got {ssim_weight} and {list(data_ranges)}")
        self.ssim_weight = float(ssim_weight)
        self.ssims = nn.ModuleList(SSIMLoss(spatial_dims=3, data_range=float(r)) for r in data_ranges)

    @in_float32
    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        if prediction.shape != target.shape or prediction.ndim != 5 or prediction.shape[1] != len(self.ssims):
            raise ValueError(f"expected equal (B, {len(self.ssims)}, D, H, W) shapes, got prediction "
                             f"{tuple(prediction.shape)}, target {tuple(target.shape)}")
        loss = F.mse_loss(prediction, target)
        if self.ssim_weight == 0:
            return loss
        if min(target.shape[2:]) < 11:
            raise ValueError(f"SSIM uses an 11^3 window: patches must be >= 11 per side, got {tuple(target.shape[2:])}")
        structural = sum(ssim(prediction[:, c:c + 1], target[:, c:c + 1]) for c, ssim in enumerate(self.ssims))
        return loss + self.ssim_weight * structural / len(self.ssims)
