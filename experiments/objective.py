"""The single scalar every search minimises. Defined here once; everything else imports it.

    objective = 0.5 × val_age_mae / 6.25  +  0.5 × (1 − val_gender_acc) / 0.135

Each task is divided by the study's model A result (age MAE 6–6.5 years → 6.25; gender accuracy 86–87% →
error 0.135), so the objective is 1.0 for a model exactly as good as model A on both, and each task
counts equally relative to that baseline: one year of MAE is worth about 2.2 points of gender accuracy.
Below 1 beats model A on the balance of the two; 0.5 would halve both errors.
"""
from __future__ import annotations

METRIC = "objective"
MODE = "min"
REFERENCE_AGE_MAE = 6.25
REFERENCE_GENDER_ERROR = 0.135


def objective(gender_acc: float, age_mae: float) -> float:
    """The search objective (lower is better) from validation gender accuracy (0–1) and age MAE (years)."""
    return 0.5 * age_mae / REFERENCE_AGE_MAE + 0.5 * (1.0 - gender_acc) / REFERENCE_GENDER_ERROR
