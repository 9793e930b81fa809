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


# ---------------------------------------------------------------------------------------------------------------
# the photometric set: each changes the pixels as stated, and only the pixels

def real_crop(data_dir, size=64):
    import numpy as np
    from PIL import Image

    path = sorted(data_dir.glob("2*_1_*.jpg.chip.jpg"))[0]
    img = Image.open(path).convert("RGB").resize((size, size))
    return img, torch.from_numpy(np.array(img)).permute(2, 0, 1).float().unsqueeze(0) / 255


def only(**kw) -> AugmentStrength:
    return AugmentStrength(**{"flip": 0, "rotate": 0, "shift": 0, "scale": 0, "brightness": 0, **kw})


def test_greyscale_gives_three_equal_channels_of_the_luminance():
    from data_utils.augment import LUMA

    x = batch(16)
    y = augment_batch(x, only(grey=1.0))
    luma = sum(w * x[:, i] for i, w in enumerate(LUMA))
    for c in range(3):
        torch.testing.assert_close(y[:, c], luma)
    torch.testing.assert_close(augment_batch(x, only(grey=0.0)), x)


def test_colour_jitter_keeps_each_face_s_mean_luminance_and_changes_its_saturation():
    from data_utils.augment import greyscale

    x = 0.25 + 0.5 * batch(16)  # away from 0 and 1, so no clamping
    y = augment_batch(x, only(color=0.3))
    torch.testing.assert_close(greyscale(y).mean(dim=(1, 2, 3)), greyscale(x).mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)
    spread = lambda t: (t - greyscale(t)).abs().mean(dim=(1, 2, 3))  # noqa: E731
    ratio = spread(y) / spread(x)
    assert (ratio - 1).abs().max() > 0.05 and ratio.min() > 0.7 ** 2 and ratio.max() < 1.3 ** 2


def test_blur_smooths_and_keeps_the_mean(data_dir):
    _, x = real_crop(data_dir)
    y = augment_batch(x, only(blur=1.0))
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean() + (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert tv(y) < 0.9 * tv(x)
    assert abs(y.mean().item() - x.mean().item()) < 2e-3


def test_jpeg_round_trip_is_what_a_jpeg_encoder_does(data_dir):
    import io

    import numpy as np
    from PIL import Image

    from data_utils.augment import jpeg_round_trip

    img, x = real_crop(data_dir)
    for quality in (30, 75):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        ref = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float().unsqueeze(0) / 255
        ours = jpeg_round_trip(x, torch.tensor([quality]))
        lost, off = (ours - x).abs().mean(), (ours - ref).abs().mean()
        assert lost > 1 / 255 and off < lost / 2, (quality, lost * 255, off * 255)
    assert (augment_batch(x, only(jpeg=1.0)) - x).abs().mean() > 0.5 / 255


@pytest.mark.parametrize("field", ["color", "grey", "blur", "jpeg"])
def test_photometric_changes_touch_pixels_not_labels(field):
    """The training loop hands augment_batch the images alone; every change keeps the shape, the range and the
    batch's order (image i stays the face whose label is i: the one that most resembles it)."""
    x = batch(8)
    y = augment_batch(x, only(**{field: 0.5 if field == "color" else 1.0}))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)
    nearest = torch.cdist(y.flatten(1), x.flatten(1)).argmin(1)
    assert nearest.tolist() == list(range(8))
