"""Model A: a CNN from scratch. Stages of two 3×3 conv-BN-ReLU layers and a 2×2 max-pool, widths doubling to 512."""
from __future__ import annotations

from torch import nn

from models.net import AgeGenderNet
from models.views import resolved_tta_zoom

MAX_WIDTH = 512


def stage_widths(depth: int, base_width: int) -> list[int]:
    """Channel width of each conv stage: base, 2×base, ... capped at 512 (the study: 64→512)."""
    return [min(base_width * 2 ** i, MAX_WIDTH) for i in range(depth)]


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def build_scratch(config) -> AgeGenderNet:
    """Build model A from ``config.depth`` stages, ``base_width``, ``pool_size``, ``dense_units``, ``dropout``.

    The adaptive pooling after the last stage brings the map to ``pool_size``×``pool_size`` (below 10×10)
    whatever the input size, so the dense layers' shape never depends on the image size.
    """
    if not 1 <= config.depth <= 8:
        raise ValueError(f"scratch depth (conv stages) must be 1-8, got {config.depth}")
    if not 1 <= config.pool_size <= 9:
        raise ValueError(f"pool_size must be 1-9 (the map entering the dense layers stays below 10x10), got {config.pool_size}")
    layers, cin = [], 3
    for width in stage_widths(config.depth, config.base_width):
        layers += conv_bn_relu(cin, width) + conv_bn_relu(width, width) + [nn.MaxPool2d(2, ceil_mode=True)]
        cin = width
    layers.append(nn.AdaptiveAvgPool2d(config.pool_size))
    neck = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(config.dropout),
        nn.Linear(cin * config.pool_size ** 2, config.dense_units, bias=False),
        nn.BatchNorm1d(config.dense_units),
        nn.ReLU(inplace=True),
        nn.Dropout(config.dropout),
    )
    return AgeGenderNet(nn.Sequential(*layers), neck, config.dense_units, config.age_head, config.tta_flip,
                        resolved_tta_zoom(config))
