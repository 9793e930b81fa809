"""For whom a model fails: gender accuracy and age MAE per group, with bootstrap intervals, and the largest gaps.

Groups come from UTKFace's file names (``data_utils.scan.race_group``: White, Black, Asian, Indian, Others,
unknown) and the true gender. Each interval is the 2.5th–97.5th percentile of the metric over ``BOOTSTRAP``
resamples of the group's faces (the percentile bootstrap), so a small group shows a wide interval rather than a
confident gap.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from data_utils.scan import race_group
from experiments.evaluation.metrics import interval, per_face

BOOTSTRAP = 1000
MIN_GROUP_FACES = 20  # a smaller group is shown, but not named as a largest gap: its interval is too wide
GENDER_NAMES = {0: "male", 1: "female"}


def with_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """Predictions (name, age, gender, pred_age, p_female[, race]) with ``race``, ``sex``, ``correct`` and
    ``abs_err``."""
    out = frame.copy()
    if "race" not in out:  # a labels file's own race/group column wins over the name
        out["race"] = [race_group(str(n)) for n in out["name"]]
    out["sex"] = [GENDER_NAMES[int(g)] for g in out["gender"]]
    out["correct"], out["abs_err"] = per_face(out)
    return out


def group_table(frame: pd.DataFrame, by: list[str], n_boot: int = BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """One row per group of ``by`` (columns of ``with_groups``): faces, gender accuracy and age MAE with their
    95% bootstrap intervals. ``frame`` is ``with_groups``' output."""
    rng = np.random.default_rng(seed)
    rows = []
    for key, part in frame.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        acc_lo, acc_hi = interval(part["correct"].to_numpy(), rng, n_boot)
        mae_lo, mae_hi = interval(part["abs_err"].to_numpy(), rng, n_boot)
        rows.append({**dict(zip(by, key)), "faces": len(part),
                     "gender_acc": float(part["correct"].mean()), "acc_low": acc_lo, "acc_high": acc_hi,
                     "age_mae": float(part["abs_err"].mean()), "mae_low": mae_lo, "mae_high": mae_hi})
    return pd.DataFrame(rows)


def largest_gaps(table: pd.DataFrame, by: list[str], min_faces: int = 1) -> dict[str, Any]:
    """The best and worst group on each metric among groups of at least ``min_faces``, and the gap between them."""
    table = table[table["faces"] >= min_faces]
    if len(table) < 2:
        return {}
    name = lambda row: " × ".join(str(row[c]) for c in by)  # noqa: E731
    acc_best, acc_worst = table.loc[table["gender_acc"].idxmax()], table.loc[table["gender_acc"].idxmin()]
    mae_best, mae_worst = table.loc[table["age_mae"].idxmin()], table.loc[table["age_mae"].idxmax()]
    return {"gender_acc": {"best": name(acc_best), "worst": name(acc_worst),
                           "gap_points": round(100 * float(acc_best["gender_acc"] - acc_worst["gender_acc"]), 2)},
            "age_mae": {"best": name(mae_best), "worst": name(mae_worst),
                        "gap_years": round(float(mae_worst["age_mae"] - mae_best["age_mae"]), 3)}}


def fairness(frame: pd.DataFrame, n_boot: int = BOOTSTRAP, seed: int = 0,
             min_faces: int = MIN_GROUP_FACES) -> dict[str, Any]:
    """Per race group and per gender × race group tables and their largest gaps (among groups of ``min_faces``+),
    for predictions (name, age, gender, pred_age, p_female)."""
    grouped = with_groups(frame)
    out = {}
    for label, by in (("race", ["race"]), ("sex_race", ["sex", "race"])):
        table = group_table(grouped, by, n_boot, seed)
        out[label] = {"table": table, "gaps": largest_gaps(table, by, min_faces)}
    return out
