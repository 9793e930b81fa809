"""The export folder's format, written and read here only: weights, config, preprocessing, metrics, calibration,
the ONNX and TorchScript graphs and their parity check.

The exported graphs take RGB images as float N×3×S×S in [0, 1] (normalisation is inside the model) and return
(age in years, P(female), age spread), P(female) temperature-scaled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from experiments.config import TrainConfig
from models import Ensemble, build_model
from models.net import IMAGENET_MEAN, IMAGENET_STD

CONFIG_FILE, WEIGHTS_FILE, PREPROCESSING_FILE, METRICS_FILE, CALIBRATION_FILE = (
    "config.json", "model.pt", "preprocessing.json", "metrics.json", "calibration.json")
ONNX_FILE, TORCHSCRIPT_FILE, CHECK_FILE = "model.onnx", "model.torchscript.pt", "export_check.json"
# every file an export folder may hold; another file there is the user's
EXPORT_FILES = (CONFIG_FILE, WEIGHTS_FILE, PREPROCESSING_FILE, METRICS_FILE, CALIBRATION_FILE, ONNX_FILE,
                TORCHSCRIPT_FILE, CHECK_FILE)
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, PREPROCESSING_FILE)  # what rebuilding the model needs
OUTPUTS = ("age", "p_female", "age_spread")


class ExportFolderError(ValueError):
    """A folder that is not a readable export; the message names the fix."""


class Exported(nn.Module):
    """The model as exported: (age, P(female), age spread) instead of a logit, so users need no sigmoid; the logit
    is divided by the calibration's temperature first (the decision at P = 0.5 is unchanged). The spread of the
    test-time views' ages scales the age interval (``experiments.evaluation.calibration.halfwidths``).

    ``batched_views``: the views run as one batch, for the ONNX and TorchScript graphs (``forward_with_spread``)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, batched_views: bool = False):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
        self.batched_views = batched_views

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        age, logit, spread = self.model.forward_with_spread(image, self.batched_views)
        return age, torch.sigmoid(logit / self.temperature), spread


def write_model(folder: Path, model: nn.Module, cfg: TrainConfig) -> None:
    """The weights (an ensemble's as ``{"members": [state dict, ...]}``, each loadable into the config's model), the
    config and the preprocessing."""
    state = {"members": [m.state_dict() for m in model.members]} if isinstance(model, Ensemble) else model.state_dict()
    torch.save(state, folder / WEIGHTS_FILE)
    cfg.save(folder / CONFIG_FILE)
    write_json(folder / PREPROCESSING_FILE, {
        "image_size": cfg.image_size, "input": "RGB, float32, N×3×S×S, values in [0, 1]",
        "resize": "centre-crop to a square, then PIL bilinear resize to S×S (data_utils.cache.decode_face)",
        "normalization": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "applied": "inside the model"},
        "outputs": {"age": "years", "p_female": "probability that the face is female (UTKFace gender 1)",
                    "age_spread": "years: the spread of the test-time views' ages, which scales the age interval "
                                  f"({CALIBRATION_FILE})"},
    })


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def load_export(folder: str | os.PathLike) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the exported model from its config and weights (``weights_only`` loading)."""
    root = Path(folder).expanduser()
    again = "export the model again with `python search/serve/export.py --experiment DIR`"
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise ExportFolderError(f"{root} is not an export folder (missing {', '.join(missing)}); "
                                "make one with `python search/serve/export.py --experiment DIR`")
    try:
        cfg = TrainConfig.from_saved(json.loads((root / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, KeyError, ValueError) as err:
        raise ExportFolderError(f"{root / CONFIG_FILE} is not a valid model config ({err}); {again}") from None
    try:
        state = torch.load(root / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        if "members" in state:  # an ensemble: one state dict per member
            members = [build_model(cfg, load_weights=False) for _ in state["members"]]
            for member, member_state in zip(members, state["members"]):
                member.load_state_dict(member_state)
            model = Ensemble(members)
        else:
            model = build_model(cfg, load_weights=False)
            model.load_state_dict(state)
    except Exception as err:  # truncated or corrupt: RuntimeError, EOFError or an unpickling error
        raise ExportFolderError(f"{root / WEIGHTS_FILE} cannot be read (truncated or corrupt: "
                                f"{type(err).__name__}); {again}") from None
    return model.eval(), cfg


def load_calibration(folder: str | os.PathLike) -> dict | None:
    """The export's calibration (temperature, age errors for the interval), or None for an export without one."""
    path = Path(folder).expanduser() / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportFolderError(f"{path} is not valid JSON ({err}); export the model again") from None
