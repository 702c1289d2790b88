"""Weights in and out of checkpoints for the families that hold one torch network."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .common import prefixed_state, unprefixed_state
from .devices import inference_dtype, place_for_inference
from .inference import inference_network

if TYPE_CHECKING:
    from ..models.base import TrainSettings


class NetworkWeights:
    """Mixin for families holding one torch network ``self.net`` (built by ``self._build()``) and a wanted inference
    device ``self.device``: weights in and out of checkpoints, and placing the network once before inference."""

    fine_tunes = True
    trains_on_a_schedule = True

    def state_dict(self) -> dict:
        return prefixed_state(self.net)

    def _initial_network(self, settings: TrainSettings) -> nn.Module:
        """A fresh network, holding ``settings.initial_state`` when fine-tuning a checkpoint."""
        net = self._build()
        if settings.initial_state is not None:
            try:
                net.load_state_dict(unprefixed_state(settings.initial_state))
            except RuntimeError as err:
                first = [line.strip() for line in str(err).splitlines() if line.strip()][1:2]
                raise ValueError(f"{self.family}: the starting weights do not fit this network (an architecture "
                                 f"hyperparameter changed?): {' '.join(first) or err}") from None
        return net

    def load_state_dict(self, state: dict) -> None:
        self.net = self._build()
        self.net.load_state_dict(unprefixed_state(state))
        self.device = "auto"

    def _for_inference(self) -> tuple[nn.Module, torch.device, torch.dtype | None]:
        """(`inference_network` copy of ``self.net``, its device, the autocast dtype to predict under); the network
        is placed on the wanted device once."""
        device = place_for_inference(self.net, self.device)
        self.device = None  # placed once
        return inference_network(self.net), device, inference_dtype(device, self.schedule.amp)
