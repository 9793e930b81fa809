"""The one training config: a typed dataclass with defaults. Presets, CLI flags and search trials overlay it."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from data_utils.augment import AugmentStrength
from data_utils.cache import check_image_size
from data_utils.sources import join_sources, split_sources
from experiments.device import PRECISIONS
from models.heads import AGE_HEADS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "plateau", "none")


# fields added after runs had saved their configs → the value those runs had in effect
SAVED_BEFORE = {"tta_zoom": 0.0}


class UnknownConfigKeyError(KeyError):
    """A config key that ``TrainConfig`` does not have; the message names the valid ones."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass
class TrainConfig:
    # data
    arch: str = "scratch"  # see models.ARCHS
    data_dir: str | None = None  # folder(s) or labels CSV(s), os.pathsep-joined (data_utils.sources); default: $UTKFACE_DIR
    cache_dir: str | None = None  # default: $FACETUNE_CACHE or ~/.cache/facetune
    image_size: int = 128
    max_images: int = 0  # > 0: a seeded subset of this many images, for quick runs
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    # model
    depth: int = 5  # scratch: conv stages (two convs + max-pool each)
    base_width: int = 32  # scratch: channels of the first stage, doubling per stage up to 512
    pool_size: int = 2  # scratch: the map entering the dense layers is pool_size × pool_size
    dense_units: int = 256
    dropout: float = 0.3
    backbone: str = "mobilenet_v2"  # pretrained only
    weights_path: str | None = None  # pretrained: ImageNet weights (default: models.weights search order)
    # distribution (softmax over 1-year bins, DLDL-v2) or regression (one unit, years): the distribution head
    # lowers the age error (experiments/benchmarks/ablation.py)
    age_head: str = "distribution"
    # pretrained: the backbone trains from this epoch on; from the start, at half the head's rate, beats a frozen
    # start with a slow backbone (experiments/benchmarks/ablation.py)
    unfreeze_epoch: int = 0
    backbone_lr_mult: float = 0.5  # pretrained: backbone LR = lr × this once unfrozen
    # optimisation
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4  # not applied to biases and norm layers
    batch_size: int = 64
    epochs: int = 30
    schedule: str = "cosine"  # cosine (per step, after warmup), plateau (on the objective), none
    warmup_epochs: float = 1.0  # cosine only: linear warmup
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    grad_clip: float = 5.0  # max gradient norm; 0 disables
    age_loss_weight: float = 0.1  # loss = BCE(gender) + age_loss_weight × L1(age in years) [+ KL, distribution head]
    ema_decay: float = 0.0  # > 0: score and save a moving average of the weights (no gain in CPU-length runs)
    # augmentation (data_utils.augment.AugmentStrength)
    aug_flip: float = 0.5
    aug_rotate: float = 10.0
    aug_shift: float = 0.1
    aug_scale: float = 0.1
    aug_brightness: float = 0.2
    aug_erase: float = 0.0  # probability of random erasing (one noise rectangle per face)
    # the changes photos bring that UTKFace's crops lack (data_utils.augment); off unless the evidence keeps them
    aug_color: float = 0.0  # max saturation and contrast change, fraction
    aug_grey: float = 0.0  # probability of a greyscale face
    aug_blur: float = 0.0  # probability of a Gaussian blur
    aug_jpeg: float = 0.0  # probability of a JPEG re-compression (quality 30–90)
    # sampling: each training face is drawn with weight (its group's size)^-group_balance, groups being UTKFace's
    # race field (data_utils.scan.race_group); 0 draws every face once an epoch, 1 every group equally often
    group_balance: float = 0.0
    mixup_alpha: float = 0.0  # > 0: blend each batch with a shuffled copy, λ ~ Beta(α, α); labels mixed alike
    tta_flip: bool = True  # evaluation averages each face and its mirror (validation, test, export, predict)
    # > 0: evaluation also averages the face zoomed in and out by this fraction (models.views.zoom_views); None:
    # the architecture's own choice (models.views.TTA_ZOOM)
    tta_zoom: float | None = None
    # run
    seed: int = 0
    device: str = "auto"  # auto (cuda if present), cpu, cuda, cuda:N
    precision: str = "auto"  # auto (bf16 where the device computes it natively, else fp32), bf16, fp32
    channels_last: bool = True  # convolutions in NHWC layout (faster on CPUs and GPUs for both architectures)
    train_on_val: bool = False  # train on train+val (final retraining); validation metrics then come from test

    def __post_init__(self):
        from models import ARCHS

        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; valid: {', '.join(ARCHS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.age_head not in AGE_HEADS:
            raise ValueError(f"unknown age_head {self.age_head!r}; valid: {', '.join(AGE_HEADS)}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0 (0 = off), got {self.mixup_alpha}")
        if not 0 <= self.group_balance <= 1:
            raise ValueError(f"group_balance must be in [0, 1] (0 = off, 1 = groups drawn equally), got {self.group_balance}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        check_image_size(self.image_size)
        try:
            self.augmentation()
        except ValueError as err:
            raise ValueError(f"config aug_* fields: {err}") from None
        for name in ("batch_size", "epochs", "dense_units", "base_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.tta_zoom is not None and not 0 <= self.tta_zoom < 0.5:
            raise ValueError(f"tta_zoom must be in [0, 0.5) (0 = off), got {self.tta_zoom}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.data_dir:
            self.data_dir = join_sources(split_sources(self.data_dir))

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """Overlay ``values`` on ``base`` (or the defaults). Unknown keys raise, naming the valid ones."""
        merged = asdict(base) if base is not None else {}
        merged.update(coerce_values(values))
        return cls(**merged)

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> "TrainConfig":
        """A config saved with an earlier run (a checkpoint's, an export's): fields it predates take the value
        that reproduces how it was trained and scored (``SAVED_BEFORE``), not today's default."""
        return cls.from_dict({**SAVED_BEFORE, **values})

    def augmentation(self) -> AugmentStrength:
        """The training augmentation these ``aug_*`` fields describe."""
        return AugmentStrength(self.aug_flip, self.aug_rotate, self.aug_shift, self.aug_scale, self.aug_brightness,
                               self.aug_erase, self.aug_color, self.aug_grey, self.aug_blur, self.aug_jpeg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def coerce_values(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` cast to ``TrainConfig``'s field types; unknown keys raise, naming the valid ones."""
    valid = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise UnknownConfigKeyError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    hints = get_type_hints(TrainConfig)
    return {k: _coerce(k, v, hints[k]) for k, v in values.items()}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Cast JSON/CLI/search values to the field's type (Optuna hands out numpy scalars, JSON gives ints for floats)."""
    if value is None:
        return None
    kinds = getattr(hint, "__args__", (hint,))
    if bool in kinds:
        if isinstance(value, str):
            if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(f"config key {key} needs true or false, got {value!r}")
            return value.lower() in ("1", "true", "yes")
        return bool(value)
    for kind in (int, float, str):
        if kind in kinds:
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"config key {key} needs a whole number, got {value}")
            try:
                return kind(value)
            except (TypeError, ValueError):
                noun = {int: "a whole number", float: "a number", str: "a string"}[kind]
                raise ValueError(f"config key {key} needs {noun}, got {value!r}") from None
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict; JSON lists, objects, strings and true/false/null are decoded,
    other values stay strings for ``TrainConfig.from_dict`` to cast. Raises ``ValueError`` naming the item."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r} (e.g. --set lr=0.001)")
        if not value.strip():
            raise ValueError(f"--set {item}: no value after '='; give one, e.g. --set {key}=VALUE")
        if value[:1] in "[{\"" or value in ("true", "false", "null"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(f"--set {item}: the value is not valid JSON ({err.msg}); quote strings as "
                                 f"'{key}=\"text\"' or write numbers plainly") from None
        values[key] = value
    return values


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config_file(name_or_path: str) -> dict[str, Any]:
    """Read a JSON config: a file path, or the name of a preset in experiments/configs/."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor a preset; presets: {', '.join(preset_names())}")
    values = json.loads(path.read_text())
    values.pop("_comment", None)
    return values


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``config`` with ``changes`` applied and validated."""
    return dataclasses.replace(config, **changes)
