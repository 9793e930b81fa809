"""Scores of labelled predictions: exact ages, age ranges, intervals, bootstrap intervals."""
import numpy as np
import pytest

from experiments.evaluation.scoring import labelled_frame, score


def test_exact_and_range_labels_are_scored_by_hand():
    # faces 0-1 exact (30, 40); faces 2-4 ranges 25-32, 25-32, 70-116
    frame = labelled_frame(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"], [1, 0, 1, 0, 1],
                           [30, 40, 25, 25, 70], [30, 40, 32, 32, 116], [33.0, 38.0, 28.4, 35.0, 60.0],
                           [0.9, 0.2, 0.4, 0.1, 0.8], [25, 30, 20, 33.5, 50], [41, 46, 36, 36.5, 69.5],
                           ["g1", "g1", "g2", None, "g2"])
    s = score(frame, n_boot=200)
    assert s["n"] == 5 and s["exact_ages"] == 2 and s["age_ranges"] == 3
    assert s["gender_acc"]["value"] == pytest.approx(4 / 5, abs=1e-4)
    assert s["age_mae"]["value"] == pytest.approx((3 + 2) / 2)
    assert s["range_hit"]["value"] == pytest.approx(1 / 3, abs=1e-4)  # 28.4 → 28 inside; 35 and 60 outside
    assert s["range_distance"]["value"] == pytest.approx((0 + 3 + 10) / 3, abs=1e-4)
    # covered: 25-41 ∋ 30, 30-46 ∋ 40, 20-36 meets 25-32, 33.5-36.5 misses 25-32, 50-69.5 misses 70+
    assert s["interval_coverage"]["value"] == pytest.approx(3 / 5, abs=1e-4)
    for key in ("gender_acc", "age_mae", "range_hit", "interval_coverage"):
        assert s[key]["low"] <= s[key]["value"] <= s[key]["high"]
    groups = {row["race"]: row["faces"] for row in s["groups"]["race"]["table"]}
    assert groups == {"g1": 2, "g2": 2, "unknown": 1}


def test_the_bootstrap_interval_narrows_with_more_faces():
    rng = np.random.default_rng(0)

    def width(n):
        pred = rng.normal(30, 5, n)
        s = score(labelled_frame([f"{i}.jpg" for i in range(n)], rng.integers(0, 2, n), np.full(n, 30),
                                 np.full(n, 30), pred, rng.random(n)), n_boot=300)
        return s["age_mae"]["high"] - s["age_mae"]["low"]

    assert width(2000) < width(50) / 3
