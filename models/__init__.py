"""The two architectures. ``build_model(config)`` picks one by ``config.arch``."""
from __future__ import annotations

from typing import Callable, Protocol

from models.ensemble import Ensemble
from models.net import AgeGenderNet
from models.pretrained import build_pretrained
from models.scratch import build_scratch


class ModelSpec(Protocol):
    """The config fields the builders read (``experiments.config.TrainConfig`` has them all)."""

    arch: str
    depth: int
    base_width: int
    pool_size: int
    dense_units: int
    dropout: float
    backbone: str
    weights_path: str | None
    age_head: str
    tta_flip: bool
    tta_zoom: float | None


ARCHS: dict[str, Callable[..., AgeGenderNet]] = {
    "scratch": lambda config, load_weights=True, state=None: build_scratch(config),
    "pretrained": build_pretrained,
}


def build_model(config: ModelSpec, load_weights: bool = True, imagenet_state: dict | None = None) -> AgeGenderNet:
    """Build the model named by ``config.arch``.

    For ``pretrained``, ImageNet weights come from ``imagenet_state`` when given (a search ships them to its
    trials), else from disk; ``load_weights=False`` skips them when a checkpoint's weights will follow.
    """
    if config.arch not in ARCHS:
        raise ValueError(f"unknown arch {config.arch!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[config.arch](config, load_weights=load_weights, state=imagenet_state)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHS", "AgeGenderNet", "Ensemble", "ModelSpec", "build_model", "count_parameters"]
