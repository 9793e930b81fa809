"""Ray Tune and Optuna: search spaces, presets, the trainables, the tuners, interrupts and storage callbacks."""
