"""Stopping a run with SIGINT (Ctrl-C) or SIGTERM: the stage in progress ends cleanly, the run exits with how to resume.

Ray Tune ends an experiment cleanly on SIGUSR1 (it checkpoints every trial's state one last time and returns from
``fit``); its own SIGINT handler is switched off (``TUNE_DISABLE_SIGINT_HANDLER``) so that SIGINT and SIGTERM reach
this module's handler alike. During a Tune experiment the handler forwards the first signal as SIGUSR1 and
``tune_stage`` raises ``Interrupted`` once ``fit`` returns, so no later stage starts from half a search; outside
one it raises ``Interrupted`` at once. A second signal stops at once. ``stop_requested`` (a disk running full)
takes the same path without a signal.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

from ray.tune import Callback

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# a clean stop takes seconds; one that takes longer hangs on a Ray instance the same signal ended (a SIGTERM sent to
# the whole process group reaches Ray's own processes too), and Tune's last snapshot on disk is what is kept
STOP_GRACE_S = 30.0


class Interrupted(Exception):
    """The run was stopped by a signal (``signum``) or by ``stop_requested`` (``signum`` None, ``reason`` says why)."""

    def __init__(self, signum: int | None, reason: str = ""):
        self.signum, self.reason = signum, reason
        super().__init__(reason or signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 1


class _State:
    signum: int | None = None
    reason: str = ""
    in_tune = False
    hint = "run the same command again"


_state = _State()


def _handle(signum, frame) -> None:
    if _state.signum is not None or _state.reason:  # a second signal: stop at once
        raise Interrupted(signum)
    _state.signum = signum
    print(f"\n{signal.Signals(signum).name}: stopping cleanly, every trial's state is saved (signal again to stop at "
          "once)", file=sys.stderr, flush=True)
    threading.Thread(target=_end_if_stuck, args=(signum,), daemon=True).start()
    if not _stop_tune():
        raise Interrupted(signum)


def _end_if_stuck(signum: int) -> None:
    threading.Event().wait(STOP_GRACE_S)
    print(f"{signal.Signals(signum).name}: the run did not stop within {STOP_GRACE_S:.0f} s (were Ray's own processes "
          f"stopped too?); the last saved state is kept; {_state.hint}", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def set_hint(text: str) -> None:
    """What the run's last line says to do next (how to resume it)."""
    _state.hint = text


def install() -> None:
    """Handle SIGINT and SIGTERM in this (the driver's main) thread; SIGUSR1 stays harmless outside Tune."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    signal.signal(signal.SIGUSR1, lambda *_: None)


def _stop_tune() -> bool:
    """Ask the Tune experiment in progress for its clean stop (SIGUSR1); False where none is running."""
    if _state.in_tune:
        os.kill(os.getpid(), signal.SIGUSR1)
    return _state.in_tune


def stop_requested(reason: str) -> None:
    """End the Tune experiment in progress as an interrupt does, for ``reason`` (no signal came)."""
    if _state.signum is None and not _state.reason:
        _state.reason = reason
        _stop_tune()


def pending() -> Interrupted | None:
    """The interrupt this run has received, if any."""
    if _state.signum is not None:
        return Interrupted(_state.signum)
    return Interrupted(None, _state.reason) if _state.reason else None


@contextmanager
def tune_stage():
    """Around a Tune ``fit``: a signal stops the experiment cleanly, and ``Interrupted`` is raised once it returns."""
    if (early := pending()) is not None:
        raise early
    _state.in_tune = True
    try:
        yield
    except Exception as err:  # e.g. Tune reading back a trial's error file that the full disk left empty
        if (late := pending()) is not None:
            raise late from err
        raise
    finally:
        _state.in_tune = False
    if (late := pending()) is not None:
        raise late


class ResendStop(Callback):
    """Repeats the stop to Tune every step once asked: a signal that came before Tune installed its SIGUSR1
    handler would otherwise be lost. Holds no state, so it pickles with the experiment."""

    def on_step_begin(self, iteration, trials, **info):
        if pending() is not None:
            _stop_tune()
