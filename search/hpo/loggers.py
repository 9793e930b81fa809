"""The files every Tune stage writes into each trial's folder: Tune's own CSV, JSON and TensorBoard loggers.

Tune adds these loggers itself when none is given, and for its TensorBoard logger prints a ``tensorboard --logdir``
line naming its staging folder in the Ray session's temp folder, where the project's files are not. Here they are
given explicitly, the TensorBoard one wrapped so that Tune does not print that line: the run prints the right one.
"""
from __future__ import annotations

import os

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback, TBXLoggerCallback


class TrialEvents(LoggerCallback):
    """TensorBoard events (scalars and hparams) in each trial's folder, written by Tune's ``TBXLoggerCallback``."""

    def __init__(self):
        super().__init__()
        self._tbx = TBXLoggerCallback()

    def log_trial_start(self, trial) -> None:
        self._tbx.log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        self._tbx.log_trial_result(iteration, trial, result)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        self._tbx.log_trial_end(trial, failed)


def trial_loggers() -> list[LoggerCallback]:
    """progress.csv, result.json and TensorBoard events per trial; Tune adds no loggers of its own beside them."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return [CSVLoggerCallback(), JsonLoggerCallback(), TrialEvents()]
