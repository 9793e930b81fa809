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
from dataclasses import dataclass
from pathlib import Path

from search.files import write_json

BUDGET_FILE = "budget.json"
NO_BUDGET = "none"  # --budget none: bounded by trials and epochs only (overrides a preset's budget)
SEARCH_SHARE = 0.5  # of an architecture's share; the retraining gets what the search left
SETUP_STAGE = "setup"  # the ledger's stage for reading the faces (a cold cache decodes them) and starting Ray
# the driver's own start (Python and its imports), the stages' ends (Tune stopping its trials) and the report,
# kept out of the stages' shares; on 2 cores that wall time outside the ledger's stages approaches this reserve
REPORT_RESERVE_S = 40.0
# A retraining run takes a little longer than the search's epoch times (scaled to train+validation) say: each
# wave starts its runs' processes and data. The factor keeps the run inside its budget with a margin, without
# leaving a retraining epoch unused (experiments/benchmarks/README.md)
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
        write_json(self.path, {"budget_s": self.budget_s, "spent": self.spent, "limits": self.limits,
                               "retrain_epochs": self.retrain_epochs, "reserves": self.reserves})

    def record(self, stage: str, seconds: float) -> None:
        self.spent[stage] = seconds
        self._write()

    def set_limit(self, stage: str, seconds: float | None) -> None:
        """What ``stage`` may spend in all (None: no limit, its time is only recorded); read by its stopper."""
        self.limits[stage] = seconds
        self._write()

    def set_reserve(self, stage: str, share_s: float, epochs: int, scale: float, trial_epochs: int | None = None
                    ) -> None:
        """Make ``stage`` (a search) end in time for one retraining run of ``epochs`` epochs on ``scale`` × its
        training faces to fit in ``share_s`` (its architecture's whole share), projected from its trials' epochs.
        With ``trial_epochs`` (the length of its trials, given where its first wave is its seeded configurations
        alone) it may also give its time to the retraining (``search.hpo.stopper.BudgetStopper.gives_way``)."""
        self.reserves[stage] = {"share_s": float(share_s), "epochs": int(epochs), "scale": float(scale)}
        if trial_epochs:
            self.reserves[stage]["trial_epochs"] = int(trial_epochs)
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


@dataclass(frozen=True)
class RetrainPlan:
    configs: int
    seeds: int
    waves: int
    seconds: float  # projected
    note: str
    epochs: int | None = None  # epochs of each retraining run (None: as configured)


# Runs are never shortened to let more seeds in: on the validation split fewer, full-length seeds beat more,
# shorter ones that cost more (experiments/benchmarks/seeds_epochs.py). Only when not even one wave of full runs
# fits what is left are they shortened, down to this fraction of their epochs: the budget is the user's.
MIN_EPOCH_FRACTION_TO_FIT = 0.5

# Length pays before seeds, up to a point (the same benchmark): runs are lengthened up to MAX_EPOCH_FACTOR × their
# epochs before the time goes to further waves of seeds, and only runs at least LONG_EPOCH_FACTOR × as long are
# shortened to let such waves in
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


def plan_search(ledger: Ledger, archs: tuple[str, ...], arch: str, epochs: int, train: int, val: int,
                seeded_first_wave: bool = False) -> float:
    """Set ``arch``'s search limit in the ledger, and the reserve that keeps room for one wave of the retraining's
    shortest runs where its share is too small for both stages; where the first wave of trials is the seeded
    configurations alone, the search may give way to the retraining; returns the limit."""
    limit = ledger.search_limit(archs, arch)
    ledger.set_limit(f"{arch}/search", limit)
    ledger.set_reserve(f"{arch}/search", ledger.arch_share(archs, arch), shortest_retrain_epochs(epochs),
                       retrain_scale(train, val), epochs if seeded_first_wave else None)
    return limit


def plan_retrain_for(ledger: Ledger, archs: tuple[str, ...], arch: str, best_trial, epochs: int, train: int, val: int,
                     concurrency: int, max_configs: int, max_seeds: int) -> tuple[RetrainPlan, str]:
    """Plan ``arch``'s retraining in what its share has left, from the best search trial's epoch times (a row of
    trials.csv), and write the planned epochs to the ledger; returns the plan and its one line.

    The retraining has no limit in the ledger: it is planned to fit, its time recorded, a started run never cut.
    """
    left = ledger.retrain_seconds(archs, arch)
    run_seconds = project_run_seconds(float(best_trial["iter_seconds"]), epochs, retrain_scale(train, val),
                                      best_trial.get("epoch_seconds"), best_trial.get("score_seconds"))
    plan = plan_retrain(left, run_seconds, concurrency, max_configs, max_seeds, epochs)
    ledger.set_retrain_epochs(arch, plan.epochs)  # always: a new plan replaces an earlier one's epochs
    how = ("lengthened to fill the budget" if plan.epochs > epochs else
           "shortened as far as allowed" if plan.note else "shortened to fit")
    line = (f"{arch}: {format_duration(left)} of the budget left for retraining; a run of {epochs} epochs takes "
            f"about {format_duration(run_seconds)}: {plan.configs} configuration(s) × {plan.seeds} seed(s)"
            + (f" of {plan.epochs} epochs ({how})" if plan.epochs != epochs else "")
            + (f" ({plan.note})" if plan.note else ""))
    return plan, line
