"""Training one configuration (``train``), its typed config, the objective, the export folder's format, the
evaluation statistics and the benchmarks."""
