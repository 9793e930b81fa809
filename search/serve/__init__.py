"""Deployment: ``export`` writes a trained model's graphs and calibration; ``predict`` runs them on photos."""
