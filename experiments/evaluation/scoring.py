"""Scores of labelled predictions, each with a bootstrap interval: gender accuracy, age MAE or range hit, interval
coverage, and per group.

The labels may give an exact age or a range (``age_low``..``age_high``; equal for an exact age). For an exact age
the error is |predicted − true|; for a range, the distance from the prediction to the range (0 inside it), and a
*range hit* is a prediction that rounds into the range. An age interval covers an exact age that lies inside it,
and a range it overlaps. Each interval is the 2.5th–97.5th percentile over ``BOOTSTRAP`` resamples of the faces.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from experiments.evaluation.groups import BOOTSTRAP, MIN_GROUP_FACES, group_table, largest_gaps, with_groups
from experiments.evaluation.metrics import gender_correct, interval


def labelled_frame(names, genders, age_low, age_high, pred_age, p_female, interval_low=None, interval_high=None,
                   groups=None) -> pd.DataFrame:
    """One row per face: the labels (an exact age has ``age_low == age_high``), the predictions, and optionally
    the age interval and each face's group (None: read from a UTKFace name)."""
    frame = pd.DataFrame({"name": list(names), "gender": np.asarray(genders, np.int64),
                          "age_low": np.asarray(age_low, np.float64), "age_high": np.asarray(age_high, np.float64),
                          "pred_age": np.asarray(pred_age, np.float64), "p_female": np.asarray(p_female, np.float64)})
    frame["age"] = (frame["age_low"] + frame["age_high"]) / 2
    if interval_low is not None:
        frame["interval_low"] = np.asarray(interval_low, np.float64)
        frame["interval_high"] = np.asarray(interval_high, np.float64)
    if groups is not None and any(g for g in groups):
        frame["race"] = [g or "unknown" for g in groups]
    return frame


def _mean_interval(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    low, high = interval(values, rng, n_boot)
    return {"value": round(float(values.mean()), 4), "low": round(low, 4), "high": round(high, 4)}


def score(frame: pd.DataFrame, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """JSON-ready scores of a ``labelled_frame``: n, gender_acc, age_mae (exact ages), range_hit and
    range_distance (ranges), interval_coverage and interval_width (when the frame has intervals), and per group."""
    rng = np.random.default_rng(seed)
    exact = (frame["age_low"] == frame["age_high"]).to_numpy()
    pred, lo, hi = frame["pred_age"].to_numpy(), frame["age_low"].to_numpy(), frame["age_high"].to_numpy()
    distance = np.maximum(0.0, np.maximum(lo - pred, pred - hi))
    correct = gender_correct(frame["p_female"], frame["gender"])
    out: dict[str, Any] = {"n": len(frame), "exact_ages": int(exact.sum()), "age_ranges": int((~exact).sum()),
                           "gender_acc": _mean_interval(correct, rng, n_boot),
                           "age_mae": _mean_interval(distance[exact], rng, n_boot)}
    if (~exact).any():
        rounded = np.round(pred[~exact])
        out["range_hit"] = _mean_interval(((rounded >= lo[~exact]) & (rounded <= hi[~exact])).astype(float), rng, n_boot)
        out["range_distance"] = _mean_interval(distance[~exact], rng, n_boot)
    if "interval_low" in frame:
        low, high = frame["interval_low"].to_numpy(), frame["interval_high"].to_numpy()
        out["interval_coverage"] = _mean_interval(((low <= hi) & (high >= lo)).astype(float), rng, n_boot)
        out["interval_width"] = round(float(np.mean(high - low)), 3)
    grouped = with_groups(frame.assign(age=np.where(exact, frame["age"], np.nan)))
    grouped["abs_err"] = distance
    groups = {}
    for label, by in (("race", ["race"]), ("sex_race", ["sex", "race"])):
        table = group_table(grouped, by, n_boot, seed)
        groups[label] = {"table": table.round(4).to_dict(orient="records"),
                         "gaps": largest_gaps(table, by, MIN_GROUP_FACES)}
    out["groups"] = groups
    return out
