"""Model B: an ImageNet backbone (MobileNetV2), global average pooling, two dense layers merged additively."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from models.net import AgeGenderNet
from models.views import resolved_tta_zoom
from models.weights import load_state_dict


class AdditiveNeck(nn.Module):
    """GAP → dense₁(BN, ReLU) → dense₂(BN, ReLU); output dense₁ + dense₂ (the study's additive merge), dropout."""

    def __init__(self, in_features: int, width: int, dropout: float):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dense1 = nn.Sequential(nn.Linear(in_features, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True))
        self.dense2 = nn.Sequential(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.dense1(self.pool(x))
        return self.dropout(h1 + self.dense2(h1))


def mobilenet_v2(state: dict[str, torch.Tensor] | None) -> tuple[nn.Module, int]:
    """MobileNetV2's feature extractor; ``state`` (the full ImageNet classifier's state dict) loads strictly."""
    # imported here: torchvision pulls in torch._dynamo, seconds that every command and trial process would pay
    # at start-up, though only this architecture needs it
    import torchvision

    net = torchvision.models.mobilenet_v2()
    if state is not None:
        net.load_state_dict(state, strict=True)
    return net.features, net.last_channel


BACKBONES: dict[str, Callable[[dict | None], tuple[nn.Module, int]]] = {"mobilenet_v2": mobilenet_v2}
WEIGHT_LOADERS = {"mobilenet_v2": load_state_dict}


def imagenet_state(config) -> dict[str, torch.Tensor]:
    """The ImageNet state dict for ``config.backbone``, found as ``models.weights`` describes."""
    return WEIGHT_LOADERS[config.backbone](config.weights_path)[0]


def build_pretrained(config, load_weights: bool = True, state: dict[str, torch.Tensor] | None = None) -> AgeGenderNet:
    """Build model B on ``config.backbone``. ImageNet weights come from ``state`` if given, else are found on
    disk when ``load_weights``; ``load_weights=False`` skips them (a checkpoint's weights follow)."""
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; valid: {', '.join(sorted(BACKBONES))}")
    if state is None and load_weights:
        state = imagenet_state(config)
    backbone, channels = BACKBONES[config.backbone](state)
    return AgeGenderNet(backbone, AdditiveNeck(channels, config.dense_units, config.dropout), config.dense_units,
                        config.age_head, config.tta_flip, resolved_tta_zoom(config))
