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


def test_distribution_head_predicts_the_expected_age_of_its_bins():
    model = build_model(cfg(arch="scratch", depth=2, base_width=8, age_head="distribution")).eval()
    age, logit, age_logits = model.outputs(torch.rand(4, 3, 32, 32))
    assert age_logits.shape == (4, 117) and logit.shape == (4,)
    expected = (torch.softmax(age_logits, 1) * torch.arange(117.0)).sum(1)
    torch.testing.assert_close(age, expected)
    assert (age > 0).all() and (age < 116).all()
    assert 25 < age.mean() < 45  # starts from the UTKFace age prior, not the middle of 0-116
    with pytest.raises(ValueError, match="valid: regression, distribution"):
        TrainConfig(age_head="bins")


@pytest.mark.parametrize("age_head", ["regression", "distribution"])
def test_flip_tta_averages_a_face_and_its_mirror_in_eval_mode_only(age_head):
    model = build_model(cfg(arch="scratch", depth=2, base_width=8, age_head=age_head, tta_flip=True)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        age, logit = model(x)
        plain, mirrored = model.outputs(x), model.outputs(x.flip(3))
    torch.testing.assert_close(age, (plain[0] + mirrored[0]) / 2)
    p = (torch.sigmoid(plain[1]) + torch.sigmoid(mirrored[1])) / 2
    torch.testing.assert_close(torch.sigmoid(logit), p)
    assert not torch.allclose(plain[0], mirrored[0])  # the mirror is a different input, so the test can fail
    model.train()
    assert model(x)[0].shape == (3,)  # training sees one view: augmentation flips there


def test_zoomed_views_are_the_centre_enlarged_and_the_face_shrunk_within_repeated_edges():
    from models.views import zoom_views

    x = torch.rand(2, 3, 40, 40)
    inner, outer = zoom_views(x, 0.1)  # 2 pixels off (or onto) each side of 40
    assert inner.shape == outer.shape == x.shape
    torch.testing.assert_close(inner, torch.nn.functional.interpolate(x[..., 2:38, 2:38], size=(40, 40),
                                                                      mode="bilinear", align_corners=False))
    ramp = torch.linspace(0, 1, 40).expand(1, 3, 40, 40).contiguous()  # brightness grows left to right
    _, shrunk = zoom_views(ramp, 0.1)
    assert shrunk[..., 0].max() == 0 and shrunk[..., -1].min() == 1  # the edges repeated, not black
    assert torch.all(shrunk[..., 1:].diff(dim=-1) >= 0)


@pytest.mark.parametrize("arch, views", [("scratch", 2), ("pretrained", 6)])
def test_zoom_tta_averages_every_view_and_is_chosen_per_architecture(arch, views):
    from models.views import TTA_ZOOM, zoom_views

    model = build_model(cfg(arch=arch, depth=2, base_width=8, tta_flip=True)).eval()
    assert model.tta_zoom == TTA_ZOOM[arch] and len(model.views(torch.rand(1, 3, 32, 32))) == views
    model.tta_zoom = 0.1  # a config's own value wins: tta_zoom=0.1
    torch.nn.init.normal_(model.heads.age.weight)  # an untrained head answers the prior whatever the face
    torch.nn.init.normal_(model.heads.gender.weight)
    assert build_model(cfg(arch=arch, tta_zoom=0.1, depth=2, base_width=8), load_weights=False).tta_zoom == 0.1
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        age, logit = model(x)
        each = [model.outputs(v) for v in [x, *zoom_views(x, 0.1)]]
        each += [model.outputs(v.flip(3)) for v in [x, *zoom_views(x, 0.1)]]
    torch.testing.assert_close(age, torch.stack([a for a, _, _ in each]).mean(0))
    torch.testing.assert_close(torch.sigmoid(logit), torch.stack([torch.sigmoid(g) for _, g, _ in each]).mean(0))
    model.tta_zoom = 0.0
    with torch.no_grad():
        assert not torch.allclose(model(x)[0], age)  # the zoomed views changed the average, so the test can fail
    # a checkpoint or export saved before zoomed views existed was scored without them
    assert TrainConfig.from_saved({"arch": arch}).tta_zoom == 0.0 and TrainConfig().tta_zoom is None
    with pytest.raises(ValueError, match="tta_zoom must be in"):
        cfg(tta_zoom=0.5)


def test_ensemble_averages_ages_and_probabilities():
    from models import Ensemble

    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(build_model(cfg(arch="scratch", depth=2, base_width=8)).eval())
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        age, logit = Ensemble(members)(x)
        outs = [m(x) for m in members]
    torch.testing.assert_close(age, torch.stack([a for a, _ in outs]).mean(0))
    torch.testing.assert_close(torch.sigmoid(logit), torch.stack([torch.sigmoid(lg) for _, lg in outs]).mean(0))
    # confident members do not saturate the mean's logit
    extreme = torch.tensor([[60.0, -60.0], [60.0, 60.0]])
    from models.views import mean_probability_logit
    assert torch.isfinite(mean_probability_logit(extreme)).all()
    torch.testing.assert_close(torch.sigmoid(mean_probability_logit(extreme)), torch.tensor([1.0, 0.5]))  # rows: members


def test_the_spread_is_the_views_standard_deviation_and_the_ensemble_averages_it():
    from models import Ensemble

    torch.manual_seed(0)
    members = [build_model(cfg(arch="scratch", depth=2, base_width=8, tta_flip=True, tta_zoom=0.1)).eval()
               for _ in range(2)]
    for m in members:
        torch.nn.init.normal_(m.heads.age.weight)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        for m in members:
            age, logit, spread = m.forward_with_spread(x)
            views = torch.stack([m.outputs(v)[0] for v in m.views(x)])
            torch.testing.assert_close(age, m(x)[0])
            torch.testing.assert_close(spread, views.std(0))
            assert spread.min() > 0
        both = Ensemble(members).forward_with_spread(x)
        torch.testing.assert_close(both[2], torch.stack([m.forward_with_spread(x)[2] for m in members]).mean(0))
        # the views as one batch (the exported graphs) are the same function as one forward per view
        for got, want in zip(Ensemble(members).forward_with_spread(x, batched=True), both):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both[0], Ensemble(members)(x)[0])
        members[0].tta_flip, members[0].tta_zoom = False, 0.0  # one view: no spread to measure
        assert members[0].forward_with_spread(x)[2].abs().max() == 0
