"""Training one configuration, its config and objective, presets and benchmarks."""
