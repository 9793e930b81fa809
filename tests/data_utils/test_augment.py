import pytest
import torch

from data_utils.augment import ERASE_AREA, AugmentStrength, augment_batch


def batch(n=8, size=32):
    torch.manual_seed(0)
    return torch.rand(n, 3, size, size)


def test_shapes_ranges_and_change():
    x = batch()
    y = augment_batch(x, AugmentStrength())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(x, y)


def test_zero_strength_is_identity():
    x = batch()
    y = augment_batch(x, AugmentStrength(0, 0, 0, 0, 0))
    torch.testing.assert_close(x, y)


def test_flip_only_flips_exactly_some_images():
    x = batch(64)
    y = augment_batch(x, AugmentStrength(flip=0.5, rotate=0, shift=0, scale=0, brightness=0))
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    same = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 10 < sum(flipped) < 54


def test_always_flip_through_the_affine_path_matches_a_flip():
    x = batch(4)
    y = augment_batch(x, AugmentStrength(flip=1.0, rotate=1e-9, shift=0, scale=0, brightness=0))
    torch.testing.assert_close(y, x.flip(-1), atol=1e-4, rtol=0)


def test_brightness_scales_within_bounds():
    x = torch.full((16, 3, 8, 8), 0.5)
    y = augment_batch(x, AugmentStrength(flip=0, rotate=0, shift=0, scale=0, brightness=0.2))
    assert y.min() >= 0.4 - 1e-6 and y.max() <= 0.6 + 1e-6
    assert y.view(16, -1).std(dim=1).max() < 1e-6  # one factor per image


def test_erasing_fills_one_rectangle_of_noise_in_some_images():
    x = torch.zeros(400, 3, 24, 24)
    y = augment_batch(x, AugmentStrength(flip=0, rotate=0, shift=0, scale=0, brightness=0, erase=0.5))
    touched = (y != 0).any(dim=1)  # B×H×W: where noise went
    erased = touched.flatten(1).any(dim=1)
    assert 150 < erased.sum() < 250
    for mask in touched[erased][:50]:
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # one solid rectangle, every channel noise
        assert ERASE_AREA[0] * 0.5 <= box.numel() / mask.numel() <= ERASE_AREA[1] * 1.5
    assert torch.equal(y[~erased], x[~erased])


def test_bad_strengths_are_rejected():
    with pytest.raises(ValueError):
        AugmentStrength(rotate=-1)
    with pytest.raises(ValueError):
        AugmentStrength(flip=1.5)
    with pytest.raises(ValueError):
        AugmentStrength(erase=1.5)
