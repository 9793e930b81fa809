"""The Tune stopper that ends a stage when its share of the time budget (search.budget) is spent."""
from __future__ import annotations

import math
import time
from pathlib import Path

from ray import tune

from search.budget import Ledger, format_duration, project_run_seconds


class BudgetStopper(tune.Stopper):
    """Ends a stage's Tune experiment once the stage has spent the limit the ledger sets for it (earlier runs'
    time included), and writes the time spent to the ledger with every reported epoch.

    A search stage with a reserve in the ledger (``Ledger.set_reserve``) also ends when what is left of its
    architecture's share would no longer hold one retraining run of the reserved length, projected like the
    retraining's plan from the slowest trial's mean epoch times seen so far, and, where its first wave is its
    seeded configurations, as soon as its first epochs show it can do no more than compare them (``gives_way``).

    Tune pickles its stopper with the experiment, so the limit and the clock are read from the ledger when a
    process first asks (never pickled): a resumed run counts from what was spent and obeys a changed budget.
    """

    def __init__(self, root: Path, stage: str):
        self.root, self.stage = Path(root), stage
        self._clock: tuple[float, float, float | None, dict | None] | None = None  # before, start, limit, reserve
        self._times: dict[str, list[float]] = {}  # trial → sums of [whole epoch, training, scoring, epochs]
        self._said = False

    def __getstate__(self):
        return {**self.__dict__, "_clock": None, "_times": {}, "_said": False}

    def _start(self) -> tuple[float, float, float | None, dict | None]:
        if self._clock is None:
            ledger = Ledger(self.root)
            self._clock = (ledger.spent.get(self.stage, 0.0), time.monotonic(), ledger.limits.get(self.stage),
                           ledger.reserves.get(self.stage))
        return self._clock

    def elapsed(self) -> float:
        before, start, _, _ = self._start()
        return before + time.monotonic() - start

    def observe(self, trial_id: str, result: dict) -> None:
        """Count one reported epoch's times (the reserve's projection)."""
        parts = [result.get(k) for k in ("time_this_iter_s", "epoch_seconds", "score_seconds")]
        if parts[0] is None:
            return
        sums = self._times.setdefault(trial_id, [0.0, 0.0, 0.0, 0])
        for i, value in enumerate(parts):
            sums[i] += float(value) if value is not None else math.nan
        sums[3] += 1

    def reserved_seconds(self) -> float | None:
        """The retraining run the search must leave room for, projected from the slowest trial; None before any
        epoch is reported or without a reserve."""
        reserve = self._start()[3]
        if not reserve or not self._times:
            return None
        return self._projected_run(int(reserve["epochs"]), reserve["scale"])

    def _projected_run(self, epochs: int, scale: float) -> float:
        """One retraining run of ``epochs`` on ``scale`` × the faces, projected from the slowest trial seen."""
        return max(project_run_seconds(it / n, epochs, scale, ep / n, sc / n) for it, ep, sc, n in self._times.values())

    def gives_way(self) -> bool:
        """True where the search can only compare its seeded configurations while starving the retraining: its
        limit cannot hold a second wave of full-length trials (so no configuration it samples could finish), and
        what the limit leaves of the share cannot hold one retraining run as long as a trial. Both projected from
        the slowest trial's epochs; only with ``trial_epochs`` in the reserve (``Ledger.set_reserve``)."""
        _, _, limit, reserve = self._start()
        if limit is None or not reserve or not reserve.get("trial_epochs") or not self._times:
            return False
        epochs = int(reserve["trial_epochs"])
        trial = max(it / n for it, _, _, n in self._times.values()) * epochs
        return limit < 2 * trial and reserve["share_s"] - limit < self._projected_run(epochs, reserve["scale"])

    def limit(self) -> float | None:
        """What the stage may spend in all (earlier runs' time included); None where it has no limit."""
        _, _, limit, reserve = self._start()
        wave = self.reserved_seconds()
        if limit is None or wave is None:
            return limit
        return max(0.0, min(limit, reserve["share_s"] - wave))

    def seconds_left(self) -> float | None:
        """What the stage may still spend; None where it has no limit."""
        limit = self.limit()
        return None if limit is None else limit - self.elapsed()

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.observe(trial_id, result)
        Ledger(self.root).record(self.stage, self.elapsed())
        return False

    def stop_all(self) -> bool:
        giving_way = self.gives_way()
        limit = self.limit()
        if not giving_way and (limit is None or self.elapsed() < limit):
            return False
        Ledger(self.root).record(self.stage, self.elapsed())  # the time the stage ended, not its last epoch's
        _, _, base, reserve = self._start()
        if not self._said and (giving_way or (reserve and limit < base)):
            self._said = True
            print(self._why_ended(giving_way), flush=True)
        return True

    def _why_ended(self, giving_way: bool) -> str:
        """The line a search that ends before its limit prints."""
        spent = self.elapsed()
        if giving_way:
            return (f"{self.stage}: ends after {format_duration(spent)}: its share cannot run a trial beyond the "
                    "seeded configurations' first wave and would leave the retraining runs shorter than a trial, so "
                    "the rest goes to the retraining of the configuration best so far")
        reserve = self._start()[3]
        return (f"{self.stage}: ends after {format_duration(spent)}, leaving "
                f"{format_duration(max(0.0, reserve['share_s'] - spent))} for the retraining: one run of "
                f"{reserve['epochs']} epochs (the shortest allowed) takes about "
                f"{format_duration(self.reserved_seconds())}")
