"""Search spaces, one per architecture, kept as data. ``search.hpo.tuning.define_by_run`` turns them into Optuna calls.

Each entry maps a ``TrainConfig`` field to a distribution. ``Int(0, GRACE)`` means "0 up to the ASHA grace
period minus one", resolved when a search starts: a pretrained trial's backbone must be unfrozen (and
trained for at least one epoch) before ASHA's first rung judges it, or ASHA would compare frozen
backbones with unfrozen ones and stop trials for a choice that only pays off later.

Why these ranges:
- lr 1e-4 to 5e-3, log: Adam-family rates for small CNNs; the study's 1e-3 sits in the middle.
- weight_decay 1e-6 to 1e-2, log: from almost none to strong (decoupled, AdamW) regularisation.
- dropout 0 to 0.6: the study's heads used dropout; above 0.6 the small dense layers starve.
- batch_size 32/64/128: 32 is the study's; larger batches are faster on GPUs and change the noise scale.
- age_loss_weight 0.02 to 0.5, log: balances L1 in years (≈5-15) against BCE (≈0.3-0.7); the two tasks share
  the trunk, so the weight decides which one the features serve.
- aug_rotate 0 to 25 degrees, aug_shift 0 to 0.15: the study's augmentation, with "none" inside the range.
- scratch depth 3 to 6 stages, base_width 16/32/64: the study's "filter depth" (64→512 is 4 stages at 64);
  fewer, narrower stages train much faster, so the search can find out whether the capacity pays.
- scratch dense_units 128/256/512, pool_size 1/2/4: size of the dense layers and the map feeding them.
- pretrained unfreeze_epoch 0 to grace−1: when the ImageNet backbone starts training (see above).
- pretrained backbone_lr_mult 0.01 to 1, log: how gently the ImageNet features are fine-tuned.
- pretrained dense_units 128/256/512.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GRACE = "grace_period - 1"  # symbolic upper bound, resolved at search time


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    low: int
    high: int | str  # a number, or GRACE
    log: bool = False


@dataclass(frozen=True)
class Categorical:
    choices: tuple[Any, ...]


COMMON = {
    "lr": Float(1e-4, 5e-3, log=True),
    "weight_decay": Float(1e-6, 1e-2, log=True),
    "dropout": Float(0.0, 0.6),
    "batch_size": Categorical((32, 64, 128)),
    "age_loss_weight": Float(0.02, 0.5, log=True),
    "aug_rotate": Float(0.0, 25.0),
    "aug_shift": Float(0.0, 0.15),
}

SPACES = {
    "scratch": {
        "depth": Int(3, 6),
        "base_width": Categorical((16, 32, 64)),
        "dense_units": Categorical((128, 256, 512)),
        "pool_size": Categorical((1, 2, 4)),
        **COMMON,
    },
    "pretrained": {
        "unfreeze_epoch": Int(0, GRACE),
        "backbone_lr_mult": Float(0.01, 1.0, log=True),
        "dense_units": Categorical((128, 256, 512)),
        **COMMON,
    },
}


# the study's recipe of each architecture (experiments/configs), the first trial of every search of it
RECIPES = {"scratch": "seed_a", "pretrained": "seed_b"}
# the best configuration a search of the project found for an architecture, ranked on validation (experiments/configs
# says which search and how it scored); tried right after the recipe, so a short search starts from it
FOUND = {"scratch": "tuned_a", "pretrained": "tuned_b"}


def point_in_space(values: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The searched parameters of ``values`` moved into ``space``: numbers clipped to the range, categorical values
    to the nearest choice; parameters ``space`` does not search are left out (they come from the base config)."""
    point = {}
    for name, dist in space.items():
        if name not in values:
            continue
        value = values[name]
        if isinstance(dist, Categorical):
            numeric = all(isinstance(c, (int, float)) for c in dist.choices) and isinstance(value, (int, float))
            if value in dist.choices:
                point[name] = value
            elif numeric:
                point[name] = min(dist.choices, key=lambda c: abs(c - value))
            else:
                point[name] = dist.choices[0]
        else:
            point[name] = type(dist.low)(min(max(value, dist.low), dist.high))
    return point


_KINDS = {"float": Float, "int": Int, "categorical": Categorical}


def dist_to_json(dist: Float | Int | Categorical) -> dict[str, Any]:
    """A distribution as plain JSON, so a run's space overrides are saved with its settings."""
    kind = next(k for k, cls in _KINDS.items() if isinstance(dist, cls))
    if kind == "categorical":
        return {"kind": kind, "choices": list(dist.choices)}
    return {"kind": kind, "low": dist.low, "high": dist.high, "log": dist.log}


def dist_from_json(value: dict[str, Any]) -> Float | Int | Categorical:
    """The inverse of ``dist_to_json``; raises ``ValueError`` naming the valid kinds."""
    kind = value.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown distribution kind {kind!r}; valid: {', '.join(_KINDS)}")
    if kind == "categorical":
        return Categorical(tuple(value["choices"]))
    return _KINDS[kind](value["low"], value["high"], bool(value.get("log", False)))
