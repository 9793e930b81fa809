import numpy as np
import pytest

from data_utils.dataset import (Split, SplitMismatchError, TooFewImagesError, group_draw_weights, load_faces,
                                make_split)
from data_utils.scan import age_band


@pytest.fixture(scope="module")
def faces(data_dir):
    return load_faces(data_dir, 32)


def test_split_is_deterministic_and_covers_everything(faces):
    a, b = make_split(faces, seed=3), make_split(faces, seed=3)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(make_split(faces, seed=4).test, a.test)
    assert len(a.train) + len(a.val) + len(a.test) == len(faces)
    assert abs(len(a.test) - 0.15 * len(faces)) <= 2 and abs(len(a.val) - 0.15 * len(faces)) <= 2


def test_no_image_leaks_across_parts(faces):
    s = make_split(faces, seed=0)
    parts = [{faces.sha256[i] for i in getattr(s, p)} for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


def test_split_depends_on_content_not_row_order(faces):
    rows = np.random.default_rng(0).permutation(len(faces))
    shuffled = faces.subset(rows)
    a, b = make_split(faces, seed=1), make_split(shuffled, seed=1)
    assert {faces.sha256[i] for i in a.test} == {shuffled.sha256[i] for i in b.test}


def test_split_is_stratified(faces):
    s = make_split(faces, seed=0)
    g = faces.genders.numpy()
    assert abs(g[s.train].mean() - g[s.test].mean()) < 0.02
    bands = [age_band(a) for a in faces.ages.tolist()]
    for band in set(bands):
        total = sum(b == band for b in bands)
        in_test = sum(bands[i] == band for i in s.test)
        assert abs(in_test / total - 0.15) < 0.03, band


def test_subset_and_save_load_round_trip(faces, tmp_path):
    s = make_split(faces, seed=2, max_images=300)
    assert len(s.train) + len(s.val) + len(s.test) == 300
    s.save(tmp_path / "split.json", faces)
    back = Split.load(tmp_path / "split.json", faces)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(np.sort(getattr(s, part)), np.sort(getattr(back, part)))


def test_too_few_images_is_an_error(faces):
    with pytest.raises(ValueError, match="too few"):
        make_split(faces, max_images=3)


def test_too_few_or_one_gender_is_refused_saying_what_was_found(faces):
    with pytest.raises(TooFewImagesError, match=r"max_images 20 leaves 20 usable image\(s\) \(\d+ male, \d+ female\)"):
        make_split(faces, max_images=20)
    males = faces.subset(np.flatnonzero(faces.genders.numpy() == 0)[:200])
    with pytest.raises(TooFewImagesError, match=r"200 usable image\(s\) \(200 male, 0 female\).*both genders"):
        make_split(males)
    make_split(faces, max_images=60)  # enough of both


def test_a_changed_folder_is_named_when_a_saved_split_no_longer_fits(faces, tmp_path):
    make_split(faces, seed=0).save(tmp_path / "split.json", faces)
    fewer = faces.subset(np.arange(100))
    with pytest.raises(SplitMismatchError, match="no longer holds .* pass --data with the folder"):
        Split.load(tmp_path / "split.json", fewer)


def test_group_draw_weights_draw_each_race_group_equally_often_at_power_one():
    names = [f"{20 + i}_1_0_2017010{i}.jpg.chip.jpg" for i in range(6)] + ["30_0_2_20170101.jpg.chip.jpg",
                                                                           "31_0_2_20170102.jpg.chip.jpg", "x.jpg"]
    plain = group_draw_weights(names, 0.0)
    assert plain.tolist() == [1.0] * 9
    balanced = group_draw_weights(names, 1.0)
    share = {group: balanced[rows].sum().item() / balanced.sum().item()
             for group, rows in {"White": slice(0, 6), "Asian": slice(6, 8), "unknown": slice(8, 9)}.items()}
    assert share == pytest.approx({"White": 1 / 3, "Asian": 1 / 3, "unknown": 1 / 3})
    assert balanced.mean().item() == pytest.approx(1.0)
    half = group_draw_weights(names, 0.5)  # between the two: White drawn less than as sampled, more than balanced
    assert 1 / 3 < half[:6].sum().item() / half.sum().item() < 6 / 9
