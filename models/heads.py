"""The two output heads every architecture ends in: the gender logit and the age (a regression unit or a
distribution over one-year bins)."""
from __future__ import annotations

import torch
from torch import nn

# Age is predicted around the UTKFace mean and spread, so the ReLU head starts in its active range and
# the last layer learns offsets of order one instead of climbing from zero to ~33 years.
AGE_MEAN, AGE_STD = 33.0, 20.0

AGE_HEADS = ("regression", "distribution")
# distribution head: one bin per year of age, 0..MAX_AGE (UTKFace's oldest face is 116)
MAX_AGE = 116


class AgeGenderHeads(nn.Module):
    """Gender logit (sigmoid gives P(female)) and age in years, both shape (B,), plus the age bins' logits
    (B × (MAX_AGE + 1)) for the distribution head, None for the regression head.

    ``regression``: a ReLU unit around the UTKFace mean and spread. ``distribution`` (DLDL-v2): a softmax over
    one-year bins whose expectation is the age; it is trained towards a Gaussian label distribution.
    """

    def __init__(self, width: int, age_head: str = "regression"):
        super().__init__()
        if age_head not in AGE_HEADS:
            raise ValueError(f"unknown age_head {age_head!r}; valid: {', '.join(AGE_HEADS)}")
        self.age_head = age_head
        self.gender = nn.Linear(width, 1)
        if age_head == "regression":
            self.age = nn.Linear(width, 1)
        else:
            self.age = nn.Linear(width, MAX_AGE + 1)
            self.register_buffer("bins", torch.arange(MAX_AGE + 1, dtype=torch.float32), persistent=False)
            # start from the UTKFace age prior rather than a uniform 0-116, so the first expectation is ~33
            with torch.no_grad():
                self.age.bias.copy_(-0.5 * ((self.bins - AGE_MEAN) / AGE_STD) ** 2)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        gender = self.gender(h).squeeze(1)
        if self.age_head == "regression":
            return torch.relu(AGE_MEAN + AGE_STD * self.age(h).squeeze(1)), gender, None
        logits = self.age(h).float()
        return torch.softmax(logits, dim=1) @ self.bins, gender, logits
