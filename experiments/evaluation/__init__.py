"""Statistics on predictions: per-face errors and the bootstrap (``metrics``), calibration, groups, scoring."""
