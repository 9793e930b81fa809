"""How sure a model is: split-conformal age intervals and a temperature-scaled P(female).

Both are fitted on held-out predictions (the retraining's test split: those models trained on train+val, so no
other held-out faces exist) and checked honestly: the faces are split in random halves many times, each half
calibrates and the other half measures coverage, interval width and expected calibration error (ECE).

- Age: the split-conformal interval (Vovk et al.; Lei et al. 2018) ``pred ± q``, with ``q`` the
  ⌈(n+1)·coverage⌉-th smallest absolute error of the n calibration faces; on exchangeable faces it covers the true
  age with probability at least ``coverage``. Plain absolute errors gave narrower intervals than errors on a
  log-age or square-root-age scale at the same coverage (pretrained ensemble, 747 test faces: 23.5 years at 90%
  against 31.0 and 23.9).
- Scaled by the face's own spread (normalized conformal; Papadopoulos et al. 2008, Lei et al. 2018): with the
  spread of the test-time views' ages (``models``' ``forward_with_spread``), the interval is
  ``pred ± q · (spread + floor)``, ``q`` the same quantile of the errors divided by ``spread + floor``. It keeps
  the coverage on faces like the calibration's, and widens where the views disagree: on faces from other datasets
  (photos, other people), where a fixed width covers far fewer than promised. ``floor`` (``SPREAD_FLOOR`` of the
  median spread) gives a face whose views agree exactly an interval still.
- Gender: temperature scaling (Guo et al., 2017): P(female) = sigmoid(logit / T), T fitted by likelihood. The
  decision (P ≥ 0.5) and so the accuracy are unchanged.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit as sigmoid
from scipy.special import logit as _logit

from experiments.objective import predicted_female

DEFAULT_COVERAGE = 0.9
SPREAD = "age_spread"  # the predictions' column (and the export's output) holding the views' spread
SPREAD_FLOOR = 0.25
ECE_BINS = 10
CHECK_SPLITS = 200  # random halves for the held-out check
EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    """scipy's logit of P, clipped away from 0 and 1 so that a saturated probability stays finite."""
    return _logit(np.clip(np.asarray(p, np.float64), EPS, 1 - EPS))


def conformal_halfwidth(abs_errors: np.ndarray, coverage: float) -> float:
    """The split-conformal half-width for ``coverage`` from calibration errors; inf when too few faces for it."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1 (e.g. 0.9), got {coverage}")
    errors = np.sort(np.asarray(abs_errors, np.float64))
    k = math.ceil((len(errors) + 1) * coverage)
    return float(errors[k - 1]) if k <= len(errors) else math.inf


def age_interval(age: np.ndarray, halfwidth: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of each predicted age (one half-width, or one per face); an age is never below 0."""
    age = np.asarray(age, np.float64)
    return np.maximum(age - halfwidth, 0.0), age + halfwidth


def spread_scale(spread: np.ndarray, floor: float) -> np.ndarray:
    return np.asarray(spread, np.float64) + floor


def spread_floor(spread: np.ndarray) -> float:
    """``SPREAD_FLOOR`` of the median spread (a small positive number if every spread is 0)."""
    return max(SPREAD_FLOOR * float(np.median(spread)), 1e-3)


def halfwidths(calibration: dict[str, Any], coverage: float, spread: np.ndarray | None = None) -> float | np.ndarray:
    """The interval's half-width at ``coverage``: per face, scaled by ``spread``, where the calibration was fitted
    with spreads (``scaled``) and they are given; else the one split-conformal width of its ``abs_errors``."""
    scaled = calibration.get("scaled")
    if scaled and spread is not None:
        return conformal_halfwidth(scaled["scores"], coverage) * spread_scale(spread, scaled["floor"])
    return conformal_halfwidth(calibration["abs_errors"], coverage)


def fit_temperature(p_female: np.ndarray, female: np.ndarray) -> float:
    """The temperature that maximises the likelihood of the labels under sigmoid(logit / T)."""
    z, y = logit(p_female), np.asarray(female, np.float64)

    def nll(log_t: float) -> float:
        q = np.clip(sigmoid(z / math.exp(log_t)), EPS, 1 - EPS)
        return float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean())

    return float(math.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def apply_temperature(p_female: np.ndarray, temperature: float) -> np.ndarray:
    return sigmoid(logit(p_female) / temperature)


def expected_calibration_error(p_female: np.ndarray, female: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the predicted gender's confidence: the mean |accuracy − confidence| over equal-width confidence bins,
    weighted by the faces in each."""
    p, y = np.asarray(p_female, np.float64), np.asarray(female, bool)
    confidence = np.maximum(p, 1 - p)
    correct = predicted_female(p) == y
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        part = which == b
        if part.any():
            total += part.mean() * abs(correct[part].mean() - confidence[part].mean())
    return float(total)


def calibrate(age: np.ndarray, pred_age: np.ndarray, female: np.ndarray, p_female: np.ndarray,
              coverage: float = DEFAULT_COVERAGE, seed: int = 0, splits: int = CHECK_SPLITS,
              spread: np.ndarray | None = None) -> dict[str, Any]:
    """Fit the interval and the temperature on all these held-out faces, and check both on random halves.

    Returns a JSON-ready dict: ``temperature``, ``coverage``, ``halfwidth`` (of the fixed-width interval at
    ``coverage``), ``abs_errors`` (sorted, to give any other coverage later), with ``spread`` also ``scaled``
    (``floor`` and the sorted scaled errors ``scores``: the interval ``halfwidths`` gives), ``n`` and ``check`` (means
    and 5th–95th percentiles over the halves of the coverage reached, the interval's mean width, and the ECE before
    and after temperature scaling).
    """
    age, pred_age = np.asarray(age, np.float64), np.asarray(pred_age, np.float64)
    female, p_female = np.asarray(female, bool), np.asarray(p_female, np.float64)
    errors = np.abs(age - pred_age)
    floor = spread_floor(spread) if spread is not None else None
    scale = spread_scale(spread, floor) if spread is not None else np.ones_like(errors)
    rng = np.random.default_rng(seed)
    n = len(age)
    seen: dict[str, list[float]] = {"coverage": [], "width": [], "ece_before": [], "ece_after": []}
    for _ in range(splits if n >= 4 else 0):
        order = rng.permutation(n)
        fit, held = order[: n // 2], order[n // 2:]
        low, high = age_interval(pred_age[held], conformal_halfwidth(errors[fit] / scale[fit], coverage) * scale[held])
        seen["coverage"].append(float(((age[held] >= low) & (age[held] <= high)).mean()))
        seen["width"].append(float((high - low).mean()))
        temperature = fit_temperature(p_female[fit], female[fit])
        seen["ece_before"].append(expected_calibration_error(p_female[held], female[held]))
        seen["ece_after"].append(expected_calibration_error(apply_temperature(p_female[held], temperature), female[held]))
    check = {k: {"mean": round(float(np.mean(v)), 4), "p5": round(float(np.percentile(v, 5)), 4),
                 "p95": round(float(np.percentile(v, 95)), 4)} for k, v in seen.items() if v and np.isfinite(v).all()}
    halfwidth = conformal_halfwidth(errors, coverage)
    return {"coverage": coverage, "halfwidth": halfwidth if math.isfinite(halfwidth) else None,
            "temperature": fit_temperature(p_female, female), "n": n,
            "abs_errors": [round(float(e), 4) for e in np.sort(errors)],
            **({"scaled": {"floor": round(floor, 4), "by": "the spread of the test-time views' ages",
                           "scores": [round(float(e), 4) for e in np.sort(errors / scale)]}} if spread is not None else {}),
            "check": {"splits": len(seen["coverage"]), "held_out": "random halves: one fits, the other is scored",
                      **check}}
