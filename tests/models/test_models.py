import pytest
import torch

from experiments.config import TrainConfig
from models import ARCHS, build_model


def cfg(**kw):
    return TrainConfig.from_dict({"dense_units": 32, **kw})


@pytest.mark.parametrize("size", [24, 48, 64, 100, 128])
@pytest.mark.parametrize("depth", [1, 3, 5, 6])
def test_scratch_shapes_and_small_map_at_any_size(size, depth):
    model = build_model(cfg(arch="scratch", depth=depth, base_width=8, pool_size=3)).eval()
    seen = {}
    model.neck.register_forward_pre_hook(lambda m, inp: seen.update(neck_in=inp[0].shape))
    age, logit = model(torch.rand(2, 3, size, size))
    assert age.shape == (2,) and logit.shape == (2,)
    assert torch.isfinite(age).all() and torch.isfinite(logit).all() and (age >= 0).all()
    assert seen["neck_in"][-2:] == (3, 3)  # below 10×10 before the dense layers


def test_scratch_widths_double_to_512():
    model = build_model(cfg(arch="scratch", depth=6, base_width=64))
    widths = [m.out_channels for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)][1::2]
    assert widths == [64, 128, 256, 512, 512, 512]


@pytest.mark.parametrize("size", [32, 64, 96])
def test_pretrained_shapes(size):
    model = build_model(cfg(arch="pretrained"), load_weights=False).eval()
    age, logit = model(torch.rand(3, 3, size, size))
    assert age.shape == (3,) and logit.shape == (3,) and torch.isfinite(age).all()


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid: scratch, pretrained"):
        TrainConfig(arch="resnet")
    with pytest.raises(ValueError, match="valid: mobilenet_v2"):
        build_model(cfg(arch="pretrained", backbone="vgg"), load_weights=False)
    assert set(ARCHS) == {"scratch", "pretrained"}


def test_frozen_backbone_keeps_bn_stats_and_gets_no_gradient():
    model = build_model(cfg(arch="pretrained"), load_weights=False)
    model.freeze_backbone(True)
    model.train()
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    assert not bn.training and model.neck.training  # frozen BN stays in eval mode inside a training model
    age, logit = model(torch.rand(4, 3, 32, 32))
    (age.sum() + logit.sum()).backward()
    assert torch.equal(bn.running_mean, before)
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.heads.parameters())

    model.zero_grad(set_to_none=True)
    model.freeze_backbone(False)
    assert bn.training
    age, logit = model(torch.rand(4, 3, 32, 32))
    (age.sum() + logit.sum()).backward()
    assert not torch.equal(bn.running_mean, before)
    assert all(p.grad is not None for p in model.backbone.parameters())
