"""Faces found in a real photo and in real crops, aligned to UTKFace's geometry; bad photos named, not crashed on."""
import io

import numpy as np
import pytest
from conftest import jpeg_bytes
from PIL import Image

from data_utils import cache, photos
from data_utils.cache import DecodeError, decode_face
from data_utils.photos import UTK_LANDMARKS, align, detect, face_crop_bytes, load_photo, similarity


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())  # 512×512, one adult woman, shipped inside scikit-image


def test_one_face_in_the_packaged_photo(astronaut):
    found = detect(astronaut)
    assert len(found) == 1
    x, y, w, h = found[0].box
    # the face is in the upper middle of the picture, about a fifth of its width
    assert 150 < x < 200 and 30 < y < 90 and 70 < w < 130 and found[0].score > 0.9
    crop = align(astronaut, found[0].landmarks)
    assert crop.size == (200, 200)
    again = detect(crop)  # the aligned crop puts the landmarks where UTKFace's crops have them
    assert len(again) == 1
    assert np.abs(again[0].landmarks / 200 - UTK_LANDMARKS).max() < 0.07  # a smile moves the mouth corners


def crop_files(data_dir, n, start=0):
    return sorted(p for p in data_dir.iterdir() if p.name.endswith(".jpg.chip.jpg"))[start:start + n]


def test_real_crops_redetected_and_realigned(data_dir):
    rng = np.random.default_rng(0)
    differences = []
    for path in crop_files(data_dir, 8, 300):
        crop = load_photo(path.read_bytes())
        found = detect(crop)
        assert found, path.name
        assert np.abs(found[0].landmarks / 200 - UTK_LANDMARKS).max() < 0.12, path.name
        same = np.asarray(align(crop, found[0].landmarks), np.float64) - np.asarray(crop, np.float64)
        differences.append(np.abs(same).mean())
        # the same face rotated, shrunk and placed in a larger picture comes back to the same geometry
        angle = rng.uniform(-20, 20)
        photo = Image.new("RGB", (500, 400), (90, 90, 90))
        photo.paste(crop.rotate(angle, resample=Image.BILINEAR, fillcolor=(90, 90, 90)).resize((150, 150)), (260, 120))
        placed = detect(photo)
        assert len(placed) >= 1
        realigned = align(photo, placed[0].landmarks)
        back = detect(realigned)
        assert back and np.abs(back[0].landmarks - found[0].landmarks).max() / 200 < 0.06, path.name
        tensor, _ = decode_face(face_crop_bytes(photo, placed[0]), 64)  # the training's own preparation
        assert tensor.shape == (3, 64, 64)
    # a crop re-aligned onto UTKFace's geometry gives back nearly its own pixels: a mean |difference| of 13.6 levels
    # over these 8 crops, 36.7 with the colour channels swapped, more for a misplaced or upside-down face
    assert np.mean(differences) < 20


def test_similarity_recovers_a_known_transform():
    src = np.array([[10.0, 20.0], [50.0, 22.0], [30.0, 40.0], [15.0, 60.0], [45.0, 61.0]])
    angle, scale, shift = np.deg2rad(17), 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = similarity(src, src @ rot.T + shift)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_no_face_and_bad_photos_are_named(monkeypatch):
    assert detect(load_photo(jpeg_bytes(size=(320, 240)))) == []  # a plain picture: no face, no error
    with pytest.raises(DecodeError) as err:
        load_photo(b"")
    assert err.value.reason == "empty_file"
    with pytest.raises(DecodeError) as err:
        load_photo(jpeg_bytes()[:200])
    assert err.value.reason == "corrupt_image"
    with pytest.raises(DecodeError) as err:
        load_photo(b"this is not an image")
    assert err.value.reason == "not_an_image"
    monkeypatch.setattr(cache, "MAX_PIXELS", 100 * 100)
    with pytest.raises(DecodeError) as err:
        load_photo(jpeg_bytes(size=(200, 200)))
    assert err.value.reason == "too_large"


def test_a_large_photo_is_detected_at_a_bounded_size(astronaut, monkeypatch):
    calls = []
    real = photos.DETECTORS["retinaface"]
    monkeypatch.setitem(photos.DETECTORS, "retinaface", lambda image, score: calls.append(image.shape) or real(image, score))
    big = astronaut.resize((2048, 2048))
    found = detect(big)
    assert calls == [(photos.DETECT_MAX_SIDE, photos.DETECT_MAX_SIDE, 3)]
    assert len(found) == 1 and 600 < found[0].box[0] < 800  # boxes come back in the photo's own coordinates


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 40), (10, 200, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° when shown
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert load_photo(buf.getvalue()).size == (40, 60)
