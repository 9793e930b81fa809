"""The single scalar every search minimises. Defined here once; everything else imports it.

    objective = 0.5 × val_age_mae / 6.25  +  0.5 × (1 − val_gender_acc) / 0.135

Each task is divided by the study's model A result (age MAE 6–6.5 years → 6.25; gender accuracy 86–87% →
error 0.135), so the objective is 1.0 for a model exactly as good as model A on both, and each task
counts equally relative to that baseline: one year of MAE is worth about 2.2 points of gender accuracy.
Below 1 beats model A on the balance of the two; 0.5 would halve both errors.
"""
from __future__ import annotations

from typing import Any

METRIC = "objective"
MODE = "min"
REFERENCE_AGE_MAE = 6.25
REFERENCE_GENDER_ERROR = 0.135


def objective(gender_acc: float, age_mae: float) -> float:
    """The search objective (lower is better) from validation gender accuracy (0–1) and age MAE (years)."""
    return 0.5 * age_mae / REFERENCE_AGE_MAE + 0.5 * (1.0 - gender_acc) / REFERENCE_GENDER_ERROR


# Trials are ranked by the mean validation objective of their last SELECTION_EPOCHS epochs, not by their best
# epoch: the best of many noisy epochs on ~750 faces rewards luck, and the model a trial's configuration yields
# when retrained is its last (annealed) epoch's (experiments/benchmarks/ablation.py, README "Recipe").
SELECTION_EPOCHS = 3


def selection_score(per_epoch: Any) -> float:
    """A trial's ranking score from its per-epoch validation objectives, in epoch order (see SELECTION_EPOCHS)."""
    import numpy as np

    values = np.asarray(per_epoch, dtype=float)
    if values.size == 0:
        raise ValueError("a trial with no scored epoch has no selection score")
    return float(values[-SELECTION_EPOCHS:].mean())


# A face is called female when P(female) is at least this; training, retraining, the report and predict all
# classify through ``predicted_female``.
GENDER_THRESHOLD = 0.5


def predicted_female(p_female: Any) -> Any:
    """True where P(female) calls the face female; works on floats, numpy arrays, pandas series and tensors."""
    return p_female >= GENDER_THRESHOLD


def gender_accuracy(p_female: Any, gender: Any) -> float:
    """Share of faces whose predicted gender (``predicted_female``) equals the label (1 = female)."""
    import numpy as np

    to_numpy = lambda x: x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)  # noqa: E731
    p, g = to_numpy(p_female), to_numpy(gender)
    if p.size == 0:
        raise ValueError("gender accuracy of no faces is undefined")
    return float((predicted_female(p) == (g == 1)).mean())
