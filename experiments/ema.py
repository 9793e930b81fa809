"""An exponential moving average of a model's weights, the model that is scored and saved when ``ema_decay`` > 0.

The average starts with a short memory and lengthens it towards ``decay`` — decay_t = min(decay, (1 + t) / (10 + t))
after t updates — so that runs of a few hundred steps (a CPU search's trials) average their recent weights
rather than their random start. BatchNorm's running statistics are averaged with the weights.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """``module`` is the averaged copy of the model given; ``update(model)`` after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        for ema, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema.is_floating_point():
                ema.lerp_(value, weight)
            else:  # counters such as BatchNorm's num_batches_tracked
                ema.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
