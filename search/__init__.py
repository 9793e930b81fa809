"""Ray Tune + Optuna + ASHA search, retraining, report, export and prediction."""
