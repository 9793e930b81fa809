"""Shared pieces of both architectures: input normalisation, the two output heads, backbone freezing."""
from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Age is predicted around the UTKFace mean and spread, so the ReLU head starts in its active range and
# the last layer learns offsets of order one instead of climbing from zero to ~33 years.
AGE_MEAN, AGE_STD = 33.0, 20.0


class Normalize(nn.Module):
    """Maps RGB in [0, 1] to ImageNet-normalised input; part of the model so exports need no extra step."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class AgeGenderHeads(nn.Module):
    """Gender logit (sigmoid gives P(female)) and a ReLU age in years, both shape (B,)."""

    def __init__(self, width: int):
        super().__init__()
        self.gender = nn.Linear(width, 1)
        self.age = nn.Linear(width, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        age = torch.relu(AGE_MEAN + AGE_STD * self.age(h).squeeze(1))
        return age, self.gender(h).squeeze(1)


class AgeGenderNet(nn.Module):
    """Normalise → ``backbone`` → ``neck`` → ``heads``. Freezing acts on the submodule named ``backbone``.

    While the backbone is frozen its parameters get no gradient and its BatchNorm layers stay in eval
    mode, using their stored running statistics, even when the model is in training mode: the frozen
    features must not drift with small-batch statistics.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, width: int):
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        self.neck = neck
        self.heads = AgeGenderHeads(width)
        self.backbone_frozen = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.neck(self.backbone(self.normalize(x))))

    def freeze_backbone(self, frozen: bool = True) -> None:
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "AgeGenderNet":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self
