"""Split-conformal age intervals hold their coverage on held-out faces; temperature scaling lowers the ECE."""
import math

import numpy as np
import pytest

from experiments.evaluation.calibration import (
    age_interval,
    apply_temperature,
    calibrate,
    conformal_halfwidth,
    expected_calibration_error,
    fit_temperature,
    sigmoid,
)


def noisy_ages(n, rng):
    age = rng.uniform(1, 90, n)
    return age, age + rng.laplace(0, 2 + age / 15)  # errors grow with age, heavier-tailed than a Gaussian


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_interval_coverage_on_held_out_faces(coverage):
    rng = np.random.default_rng(1)
    age, pred = noisy_ages(3000, rng)
    halfwidth = conformal_halfwidth(np.abs(age - pred), coverage)
    held_age, held_pred = noisy_ages(20000, rng)
    low, high = age_interval(held_pred, halfwidth)
    reached = ((held_age >= low) & (held_age <= high)).mean()
    assert abs(reached - coverage) < 0.02
    assert (low >= 0).all()


def test_conformal_quantile_by_hand():
    errors = np.array([5.0, 1.0, 3.0, 2.0, 4.0])  # sorted 1..5; ⌈6 × 0.5⌉ = 3rd smallest
    assert conformal_halfwidth(errors, 0.5) == 3.0
    assert conformal_halfwidth(errors, 0.8) == 5.0  # ⌈4.8⌉ = 5th
    assert math.isinf(conformal_halfwidth(errors, 0.9))  # ⌈5.4⌉ = 6 > 5 faces: no finite interval guarantees it
    with pytest.raises(ValueError, match="between 0 and 1"):
        conformal_halfwidth(errors, 90)


def overconfident(n, rng):
    z = rng.normal(0, 2, n)
    female = rng.random(n) < sigmoid(z)
    return sigmoid(3 * z), female  # logits three times too large


def test_temperature_scaling_lowers_the_ece_on_held_out_faces():
    rng = np.random.default_rng(2)
    p, y = overconfident(4000, rng)
    temperature = fit_temperature(p, y)
    assert temperature == pytest.approx(3.0, rel=0.15)
    held_p, held_y = overconfident(4000, rng)
    before = expected_calibration_error(held_p, held_y)
    after = expected_calibration_error(apply_temperature(held_p, temperature), held_y)
    assert after < before / 2
    assert ((apply_temperature(held_p, temperature) >= 0.5) == (held_p >= 0.5)).all()  # same decisions


def test_ece_by_hand():
    p = np.array([0.9, 0.9, 0.2, 0.6])  # confidences 0.9, 0.9, 0.8, 0.6
    y = np.array([True, False, False, True])  # correct: yes, no, yes, yes
    # bins of 0.05 from 0.5: {0.9, 0.9} → acc 0.5; {0.8} → 1; {0.6} → 1
    expected = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.8) + 0.25 * abs(1 - 0.6)
    assert expected_calibration_error(p, y) == pytest.approx(expected)


def test_calibrate_checks_itself_on_halves():
    rng = np.random.default_rng(3)
    age, pred = noisy_ages(800, rng)
    p, y = overconfident(800, rng)
    c = calibrate(age, pred, y, p, coverage=0.9, splits=50)
    assert c["n"] == 800 and len(c["abs_errors"]) == 800 and c["abs_errors"] == sorted(c["abs_errors"])
    assert c["halfwidth"] == pytest.approx(conformal_halfwidth(np.abs(age - pred), 0.9), abs=1e-3)
    assert abs(c["check"]["coverage"]["mean"] - 0.9) < 0.02
    assert c["check"]["ece_after"]["mean"] < c["check"]["ece_before"]["mean"]


def test_the_spread_scaled_interval_holds_its_coverage_under_a_synthetic_shift():
    """Faces whose error grows with their views' spread; out of domain every spread is 1.6× larger and the errors
    with it. The fixed-width interval keeps 90% in domain and loses it outside; the scaled one keeps both."""
    from experiments.evaluation.calibration import halfwidths

    rng = np.random.default_rng(0)

    def faces(n, shift):
        spread = rng.uniform(0.5, 3.0, n) * shift
        pred = rng.uniform(5, 80, n)
        return pred + rng.normal(0, 2.0 * spread), pred, spread

    age, pred, spread = faces(4000, 1.0)
    fixed = calibrate(age, pred, np.zeros(4000, bool), np.full(4000, 0.3), 0.9, splits=0)
    scaled = calibrate(age, pred, np.zeros(4000, bool), np.full(4000, 0.3), 0.9, splits=20, spread=spread)
    assert 0.88 <= scaled["check"]["coverage"]["mean"] <= 0.92
    for shift, lo, hi in ((1.0, 0.88, 0.92), (1.6, 0.85, 0.95)):
        a, p, s = faces(4000, shift)
        inside = lambda half: float(np.mean(np.abs(a - p) <= half))  # noqa: E731
        assert lo <= inside(halfwidths(scaled, 0.9, s)) <= hi, shift
        if shift > 1:
            assert inside(halfwidths(fixed, 0.9, s)) < 0.8  # a fixed width, no spread: far below the promise
    assert halfwidths(scaled, 0.9) == halfwidths(fixed, 0.9)  # without spreads, the fixed width
