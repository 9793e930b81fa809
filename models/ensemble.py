"""Several trained models of one configuration as one model: the mean of their predictions."""
from __future__ import annotations

import torch
from torch import nn

from models.views import mean_probability_logit


class Ensemble(nn.Module):
    """Averages its members' ages and P(female); returns (age, gender logit) like ``AgeGenderNet``, the logit being
    that of the mean probability, so a sigmoid downstream (export, predict) gives the mean P(female)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ages, logits = zip(*(member(x) for member in self.members))
        return torch.stack(ages).float().mean(0), mean_probability_logit(torch.stack(logits))

    def forward_with_spread(self, x: torch.Tensor, batched: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` and the members' mean spread of their views' ages (``AgeGenderNet.forward_with_spread``)."""
        ages, logits, spreads = zip(*(member.forward_with_spread(x, batched) for member in self.members))
        return (torch.stack(ages).float().mean(0), mean_probability_logit(torch.stack(logits)),
                torch.stack(spreads).float().mean(0))
