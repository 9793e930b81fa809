"""Per-face errors and percentile-bootstrap intervals: what every score in the project is built from."""
from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.objective import predicted_female


def gender_correct(p_female, gender) -> np.ndarray:
    """1.0 where the predicted gender (``p_female`` thresholded as the objective does) matches ``gender`` (1 = female)."""
    return (predicted_female(np.asarray(p_female)) == (np.asarray(gender) == 1)).astype(float)


def per_face(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(1.0 where the gender is right, absolute age error) per face of a predictions table
    (``p_female``, ``gender``, ``pred_age``, ``age``)."""
    correct = gender_correct(predictions["p_female"], predictions["gender"])
    return correct, (predictions["pred_age"] - predictions["age"]).abs().to_numpy(float)


def resampled_means(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the faces of ``values`` (N, or S×N averaged over S)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values.mean(axis=0)
    return values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)


def interval(values: np.ndarray, rng: np.random.Generator, n_boot: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``, drawing from ``rng``."""
    means = resampled_means(values, rng, n_boot)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def bootstrap_ci(per_seed: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of an S×N array (S seeds, N test images), resampling images.

    The same resampled images are used for every seed, so the interval reflects how much the score
    depends on which faces landed in the test split.
    """
    return interval(np.atleast_2d(per_seed), np.random.default_rng(seed), n_boot, level)
