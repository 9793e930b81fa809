"""A search's time budget: how it is written, how it is shared between stages, and what has been spent.

``--budget 10m`` (also ``90s``, ``2h``, ``1h30m``) bounds the whole run — reading the faces (decoding
them on a cold cache) and starting Ray, every architecture's search, retraining and the report — like FLAML's
``time_budget`` and AutoGluon's ``time_limit``. What the set-up spent is taken first; each architecture gets
an equal share of the rest; within it the search gets ``SEARCH_SHARE`` and stops when that is spent (Ray Tune's
``time_budget_s``: trials still running are stopped and count as stopped early), and the retraining is planned from
the epoch times the search measured: as many seeds of the best configuration, then further configurations, as
fit in what is left. Where the share is too small for both, the search ends earlier still: it always leaves room
for one wave of the retraining's shortest allowed runs, projected from its own epoch times as they come in. The
time spent is written to ``budget.json`` in the experiment after every reported epoch, so that a resumed run
(``--resume``) gets only what is left.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

BUDGET_FILE = "budget.json"
NO_BUDGET = "none"  # --budget none: bounded by trials and epochs only (overrides a preset's budget)
SEARCH_SHARE = 0.5  # of an architecture's share; the retraining gets what the search left
SETUP_STAGE = "setup"  # the ledger's stage for reading the faces (a cold cache decodes them) and starting Ray
# the driver's own start (Python and its imports), the stages' ends (Tune stopping its trials) and the report,
# kept out of the stages' shares. Measured on 2 cores, the wall time outside the ledger's stages: 26 s in the main
# job, 40 s in the scratch CNN's half-hour (which a 30 s reserve let overrun its budget by 1 s)
REPORT_RESERVE_S = 40.0
# A retraining run can take longer than the search's epoch times (scaled to train+validation) say: each wave starts
# its runs' processes and data. Measured on 2 cores against the projection without this factor, since runs score
# the test split once: 259 s for 265 s and 308 s for 295 s (0.98× and 1.04×, the main job) and 797 s for 782 s
# (1.02×, the scratch CNN's half-hour). 1.05× keeps the run inside its budget with a margin; 1.1× (set when runs
# scored the test split every epoch and the projection did not count it) left a retraining epoch of the main job
# unused
RETRAIN_PROJECTION_FACTOR = 1.05
# the least an architecture's share can be: Ray's start, one trial of the smallest networks on a small subset and
# one retraining run of it. A budget under min_budget_s is refused before any work
MIN_ARCH_S = 30.0
_UNITS = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def project_run_seconds(iter_seconds: float, epochs: int, scale: float, epoch_seconds: float | None = None,
                        score_seconds: float | None = None) -> float:
    """Seconds one retraining run of ``epochs`` epochs will take, from a search trial's mean epoch times.

    ``iter_seconds`` is the trial's whole epoch (training, scoring the validation split, checkpoint);
    ``epoch_seconds`` its training alone and ``score_seconds`` its scoring. The run trains on ``scale`` × as many
    faces, checkpoints every epoch and scores its test split (as large as the validation split) once, after its
    last epoch. Without the parts (a search from before they were reported), the whole epoch is scaled.
    """
    if epoch_seconds is None or score_seconds is None or not math.isfinite(epoch_seconds + score_seconds):
        return iter_seconds * scale * epochs * RETRAIN_PROJECTION_FACTOR
    checkpoint = max(0.0, iter_seconds - epoch_seconds - score_seconds)
    return ((epoch_seconds * scale + checkpoint) * epochs + score_seconds) * RETRAIN_PROJECTION_FACTOR


def min_budget_s(archs: int) -> float:
    """The shortest ``--budget`` a run of ``archs`` architectures accepts: one trial and one retraining run each,
    and the report."""
    return REPORT_RESERVE_S + MIN_ARCH_S * archs


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``10m``, ``2h``, ``1h30m`` or a plain number of seconds; ``ValueError`` names the forms."""
    match = _DURATION.match(text.strip().lower()) if text and text.strip() else None
    if not match or not any(match.groups()):
        raise ValueError(f"--budget {text!r} is not a duration; write it as 90s, 10m, 2h or 1h30m (or {NO_BUDGET})")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"--budget {text!r} must be longer than zero")
    return total


def parse_budget(text: str) -> float | None:
    """``--budget``'s value in seconds (``parse_duration``), or None for ``NO_BUDGET``."""
    return None if text.strip().lower() == NO_BUDGET else parse_duration(text)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Ledger:
    """``budget.json``: the budget and the seconds each stage (``<arch>/search``, ``<arch>/retrain``) has spent."""

    def __init__(self, root: Path, budget_s: float | None = None):
        self.path = Path(root) / BUDGET_FILE
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.budget_s = budget_s if budget_s is not None else saved.get("budget_s")
        self.spent: dict[str, float] = {k: float(v) for k, v in saved.get("spent", {}).items()}
        self.limits: dict[str, float | None] = saved.get("limits", {})
        # arch → epochs of its retraining runs as planned, shortened or not (a resumed retraining keeps them)
        self.retrain_epochs: dict[str, int] = saved.get("retrain_epochs", {})
        # search stage → what it must leave its retraining (``set_reserve``)
        self.reserves: dict[str, dict[str, float]] = saved.get("reserves", {})

    def total_spent(self) -> float:
        return sum(self.spent.values())

    def _write(self) -> None:
        from search.manifest import write_json  # written then renamed: a failed write keeps the last good ledger

        write_json(self.path, {"budget_s": self.budget_s, "spent": self.spent, "limits": self.limits,
                               "retrain_epochs": self.retrain_epochs, "reserves": self.reserves})

    def record(self, stage: str, seconds: float) -> None:
        self.spent[stage] = seconds
        self._write()

    def set_limit(self, stage: str, seconds: float | None) -> None:
        """What ``stage`` may spend in all (None: no limit, its time is only recorded); read by its stopper."""
        self.limits[stage] = seconds
        self._write()

    def set_reserve(self, stage: str, share_s: float, epochs: int, scale: float) -> None:
        """Make ``stage`` (a search) end in time for one retraining run of ``epochs`` epochs on ``scale`` × its
        training faces to fit in ``share_s`` (its architecture's whole share), projected from its trials' epochs."""
        self.reserves[stage] = {"share_s": float(share_s), "epochs": int(epochs), "scale": float(scale)}
        self._write()

    def set_retrain_epochs(self, arch: str, epochs: int) -> None:
        self.retrain_epochs[arch] = int(epochs)
        self._write()

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to what ``stage`` has spent (a resumed run's set-up is spent again)."""
        self.record(stage, self.spent.get(stage, 0.0) + seconds)

    def arch_share(self, archs: tuple[str, ...], arch: str) -> float:
        """Seconds ``arch`` may use in all: an equal share of the budget less the report's reserve and the set-up
        already spent, plus whatever the architectures before it left unused."""
        usable = max(0.0, self.budget_s - REPORT_RESERVE_S - self.spent.get(SETUP_STAGE, 0.0))
        index = archs.index(arch)
        before = sum(self.spent.get(f"{a}/search", 0) + self.spent.get(f"{a}/retrain", 0) for a in archs[:index])
        return max(0.0, (usable - before) / (len(archs) - index))

    def search_limit(self, archs: tuple[str, ...], arch: str) -> float:
        """Seconds ``arch``'s search may spend in all (a resumed search's earlier time included)."""
        return SEARCH_SHARE * self.arch_share(archs, arch)

    def retrain_seconds(self, archs: tuple[str, ...], arch: str) -> float:
        """What is left of ``arch``'s share once its search is done."""
        return max(0.0, self.arch_share(archs, arch) - self.spent.get(f"{arch}/search", 0)
                   - self.spent.get(f"{arch}/retrain", 0))


class BudgetStopper(tune.Stopper):
    """Ends a stage's Tune experiment once the stage has spent the limit the ledger sets for it (earlier runs'
    time included), and writes the time spent to the ledger with every reported epoch.

    A search stage with a reserve in the ledger (``Ledger.set_reserve``) also ends when what is left of its
    architecture's share would no longer hold one retraining run of the reserved length, projected like the
    retraining's plan from the slowest trial's mean epoch times seen so far.

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
        return max(project_run_seconds(it / n, int(reserve["epochs"]), reserve["scale"], ep / n, sc / n)
                   for it, ep, sc, n in self._times.values())

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
        limit = self.limit()
        if limit is None or self.elapsed() < limit:
            return False
        Ledger(self.root).record(self.stage, self.elapsed())  # the time the stage ended, not its last epoch's
        _, _, base, reserve = self._start()
        if reserve and limit < base and not self._said:
            self._said = True
            spent = self.elapsed()
            print(f"{self.stage}: ends after {format_duration(spent)}, leaving "
                  f"{format_duration(max(0.0, reserve['share_s'] - spent))} for the retraining: one run of "
                  f"{reserve['epochs']} epochs (the shortest allowed) takes about "
                  f"{format_duration(self.reserved_seconds())}", flush=True)
        return True


@dataclass(frozen=True)
class RetrainPlan:
    configs: int
    seeds: int
    waves: int
    seconds: float  # projected
    note: str
    epochs: int | None = None  # epochs of each retraining run (None: as configured)


# Runs are never shortened to let more seeds in: on the validation split (experiments/benchmarks/seeds_epochs.py,
# model B's found configuration at 64 px) 2 seeds of 8 epochs beat 4 of 6 and 4 of 5, which cost more (README,
# "Seeds or epochs"). Only when not even one wave of full runs fits what is left are they shortened, down to this
# fraction of their epochs: the budget is the user's.
MIN_EPOCH_FRACTION_TO_FIT = 0.5

# Length pays before seeds, up to a point. In the same measurement 2 seeds of 16 epochs (objective 0.647) beat 4 of
# 8 (0.748) at equal cost and 4 of 12 (0.690) at less, and 2 of 24 (0.706) were worse than 2 of 16: so runs are
# lengthened up to MAX_EPOCH_FACTOR × their epochs before the time goes to further waves of seeds, and only runs at
# least LONG_EPOCH_FACTOR × as long are shortened to let such waves in (4 seeds of 12 beat 2 of 12, 0.690 / 0.696)
MAX_EPOCH_FACTOR = 2.0
LONG_EPOCH_FACTOR = 1.5


def shortest_retrain_epochs(epochs: int) -> int:
    """The fewest epochs a retraining run of ``epochs`` is shortened to (``MIN_EPOCH_FRACTION_TO_FIT``)."""
    return max(1, math.ceil(MIN_EPOCH_FRACTION_TO_FIT * epochs))


def retrain_scale(train: int, val: int) -> float:
    """How many times a search trial's training faces a retraining run trains on (train + validation)."""
    return (train + val) / max(1, train)


def _fit(seconds_left: float, run_seconds: float, concurrency: int, max_configs: int, max_seeds: int
         ) -> tuple[int, int, int]:
    waves = max(1, math.floor(seconds_left / run_seconds)) if run_seconds > 0 else 1
    runs = max(1, min(waves * concurrency, max_configs * max_seeds))
    seeds = min(max_seeds, runs)
    configs = max(1, min(max_configs, runs // seeds))
    return configs, seeds, math.ceil(configs * seeds / concurrency)


def plan_retrain(seconds_left: float, run_seconds: float, concurrency: int, max_configs: int,
                 max_seeds: int, epochs: int | None = None) -> RetrainPlan:
    """How many configurations × seeds of ``run_seconds`` each fit in ``seconds_left`` with ``concurrency`` at once.

    Without ``epochs`` the runs keep their length: seeds of the best configuration first (they make the exported
    ensemble), then further configurations (which only the report compares), in as many waves as fit. Given
    ``epochs``, each length from ``MAX_EPOCH_FACTOR`` × ``epochs`` down is filled that way, and the plan is the
    one with the most seeds, then the longest runs, then the most configurations, among lengths of at least
    ``LONG_EPOCH_FACTOR`` × ``epochs``; where none of those fits, the longest runs that fit (one wave, its seeds),
    down to ``MIN_EPOCH_FRACTION_TO_FIT`` of ``epochs``. At least one wave is always planned, even if it overruns
    the budget (a search must hand over a model): where not even the shortest runs fit, one wave of those, the
    least overrun.
    """
    room = seconds_left * (1 + 1e-9)  # (keeps a rounding error from costing a wave, and with it seeds)

    def option(e: int | None) -> RetrainPlan:
        seconds = run_seconds * (e / epochs if epochs else 1.0)
        configs, seeds, waves = _fit(room, seconds, concurrency, max_configs, max_seeds)
        return RetrainPlan(configs, seeds, waves, waves * seconds, "", e)

    if not epochs:
        plan = option(None)
    else:
        lowest = shortest_retrain_epochs(epochs)
        fitting = [option(e) for e in range(math.floor(MAX_EPOCH_FACTOR * epochs), lowest - 1, -1)]
        fitting = [p for p in fitting if p.seconds <= room]
        long_enough = [p for p in fitting if p.epochs >= LONG_EPOCH_FACTOR * epochs]
        if long_enough:
            plan = max(long_enough, key=lambda p: (p.seeds, p.epochs, p.configs))
        else:  # the longest runs that fit, full length or shortened; the shortest, overrunning, where none does
            plan = fitting[0] if fitting else option(lowest)
    if plan.seconds > room:
        plan = dataclasses.replace(plan, note=f"one retraining run ({plan.seconds / plan.waves:.0f} s) is longer than "
                                              f"the {seconds_left:.0f} s left; it runs anyway")
    return plan
