"""Ray Tune + Optuna + ASHA for one architecture: searcher, scheduler, tuner, fresh or restored."""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from experiments.objective import METRIC, MODE
from search.hpo.spaces import FOUND, GRACE, RECIPES, SPACES, Categorical, Float, Int, point_in_space
from search.hpo.stopper import BudgetStopper
from search.hpo.storage import stage_callbacks
from search.hpo.study import open_storage
from search.hpo.trainable import TrialData, train_trial

log = logging.getLogger(__name__)


@dataclass
class SearchPlan:
    """Everything one architecture's search needs, resolved from the run's settings and the cluster."""

    arch: str
    experiment_dir: str  # absolute local path or URI: <storage>/<name>/<arch>
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: int
    concurrency: int
    cpus_per_trial: float
    gpus_per_trial: float
    seed: int = 0
    scheduler: str = "asha"  # asha or fifo (no early stopping; for benchmarks)
    max_failures: int = 2
    space_overrides: dict[str, Any] | None = None
    optuna_storage: str | None = None  # the study's file (see study_storage_file); None: in memory
    study_name: str = ""
    fixed: tuple[str, ...] = ()  # fields --set fixed for every trial: not searched
    enqueue_recipe: bool = True  # the first trials: the study's recipe, the project's found configuration, its defaults
    ledger_root: str | None = None  # with a time budget: the experiment folder holding search.budget's ledger
    disk_reserve: int = 0  # bytes: under this much free space on the storage the search stops (search.hpo.storage)


def recipe_points(plan: SearchPlan) -> list[dict[str, Any]]:
    """The first trials of a search: the study's recipe for the architecture (``spaces.RECIPES``), the best
    configuration an earlier search of the project found (``spaces.FOUND``), then the project's measured defaults
    (``TrainConfig``'s), each moved into the searched space, so that a search never ends worse than any of them (at
    the search's image size and budget)."""
    from experiments.config import TrainConfig, load_config_file

    if not plan.enqueue_recipe:
        return []
    space = search_space(plan)
    points = []
    found = [load_config_file(FOUND[plan.arch])] if plan.arch in FOUND else []
    for values in (load_config_file(RECIPES[plan.arch]), *found, TrainConfig(arch=plan.arch).to_dict()):
        point = point_in_space(values, space)
        if point and point not in points:
            points.append(point)
    # a search of fewer trials runs the first of them; enqueued but never run, the rest would stay WAITING in the study
    return points[:plan.num_samples]


def arch_space(arch: str, space_overrides: dict[str, Any] | None, grace_period: int,
               fixed: tuple[str, ...] = ()) -> dict[str, Any]:
    """``arch``'s space with the preset's overrides, without the fields ``--set`` fixed, and the symbolic bounds
    resolved."""
    space = {**SPACES[arch], **(space_overrides or {})}
    resolved = {}
    for name, dist in space.items():
        if name in fixed:
            continue
        if isinstance(dist, Int) and dist.high == GRACE:
            dist = Int(dist.low, max(dist.low, grace_period - 1), dist.log)
        resolved[name] = dist
    return resolved


def search_space(plan: SearchPlan) -> dict[str, Any]:
    """The space a plan's searcher samples (``arch_space`` of its fields)."""
    return arch_space(plan.arch, plan.space_overrides, plan.grace_period, plan.fixed)


class DefineByRun:
    """Optuna's define-by-run function for a space of ``Float``/``Int``/``Categorical`` entries.

    A class rather than a closure: Tune pickles the searcher, and with it this function, to checkpoint
    the experiment.
    """

    def __init__(self, space: dict[str, Any]):
        for name, dist in space.items():
            if not isinstance(dist, (Float, Int, Categorical)):
                raise TypeError(f"search space entry {name}: unknown distribution {dist!r}")
        self.space = space

    def __call__(self, trial: optuna.Trial) -> None:
        for name, dist in self.space.items():
            if isinstance(dist, Float):
                trial.suggest_float(name, dist.low, dist.high, log=dist.log)
            elif isinstance(dist, Int):
                trial.suggest_int(name, dist.low, dist.high, log=dist.log)
            else:
                trial.suggest_categorical(name, list(dist.choices))


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials ASHA stopped.

    Ray reports a trial that the scheduler stopped as COMPLETE with its truncated value, so TPE would rank
    an objective measured after 2 epochs against ones measured after 100. A trial that ends without an
    error before ``max_epochs`` was stopped by the scheduler: it is recorded as PRUNED, and Optuna keeps
    its last reported value (every epoch is reported as an intermediate value).
    """

    def __init__(self, *args, max_epochs: int, budget: BudgetStopper | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._budget = budget
        self._epoch_seconds: list[float] = []
        self._reset_study_caches()

    def suggest(self, trial_id: str) -> dict | str | None:
        # Under a time budget a trial is started only if it can run all its epochs in what is left of the search's
        # share: one the budget would cut short can never be chosen (trials that ran their whole budget rank
        # first), so that time goes to the retraining instead. The trials already running go on. Where not even a
        # trial started with the search could finish in the share, every trial is cut short and they are ranked
        # among themselves: trials then start until the share is spent.
        if self._budget is not None and self._epoch_seconds:
            left, limit = self._budget.seconds_left(), self._budget.limit()
            trial_seconds = self._max_epochs * statistics.median(self._epoch_seconds)
            if left is not None and left < trial_seconds <= limit:
                print(f"search: {left:.0f} s of its time budget left, a trial of {self._max_epochs} epochs takes about "
                      f"{trial_seconds:.0f} s: no further trials start, the rest goes to the retraining", flush=True)
                return Searcher.FINISHED
        return super().suggest(trial_id)

    def _reset_study_caches(self) -> None:
        self._study_finished: dict[str, bool] = {}  # trial → whether its Optuna trial is closed (read once)
        self._replayed: dict[str, dict[int, float]] = {}  # trial → values reported while its Optuna trial was closed

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._reset_study_caches()  # re-read from the study; a state saved by an older version has neither

    def _frozen(self, trial_id: str) -> optuna.trial.FrozenTrial:
        ot_trial = self._ot_trials[trial_id]
        return self._ot_study._storage.get_trial(ot_trial._trial_id)

    def _closed_in_study(self, trial_id: str) -> bool:
        """Whether the study already holds a final state for a trial Tune is running: one Tune runs again after an
        error (``resume_errored``), or one an earlier version of this searcher closed when it was interrupted."""
        if trial_id not in self._study_finished:
            self._study_finished[trial_id] = trial_id in self._ot_trials and self._frozen(trial_id).state.is_finished()
        return self._study_finished[trial_id]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._budget is not None:
            self._budget.observe(trial_id, result)
        if result.get("time_this_iter_s") is not None:
            self._epoch_seconds.append(float(result["time_this_iter_s"]))
        if trial_id not in self._completed_trials and self._closed_in_study(trial_id):
            # a finished Optuna trial takes no more values: they are kept for the copy on_trial_complete adds
            self._replayed.setdefault(trial_id, {})[int(result["training_iteration"])] = float(result[self.metric])
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        value = None if error or not result else result.get(self.metric)
        step = int(result.get("training_iteration", 0)) if result else 0
        if value is None:
            state = optuna.trial.TrialState.FAIL
        elif step < self._max_epochs:
            state = optuna.trial.TrialState.PRUNED  # stopped by the scheduler: its truncated value is not final
        else:
            state = optuna.trial.TrialState.COMPLETE
        try:
            if self._closed_in_study(trial_id):
                self._add_copy(trial_id, state, value, step)
            else:
                ot_trial = self._ot_trials[trial_id]
                if value is not None and step not in self._frozen(trial_id).intermediate_values:
                    # Tune hands the last result to on_trial_complete only: it is recorded as the final step
                    ot_trial.report(value, step)
                self._ot_study.tell(ot_trial, value if state == optuna.trial.TrialState.COMPLETE else None,
                                    state=state)
        except Exception as exc:  # e.g. a NaN objective, which Optuna refuses
            log.warning("could not record trial %s in the Optuna study: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _add_copy(self, trial_id: str, state, value: float | None, step: int) -> None:
        """Record a trial Tune ran again, whose first Optuna trial is closed, as a new Optuna trial with its
        parameters and every value it reported."""
        old = self._frozen(trial_id)
        values = {**old.intermediate_values, **self._replayed.pop(trial_id, {})}
        if value is not None:
            values[step] = value
        if state == optuna.trial.TrialState.PRUNED and values:
            value = values[max(values)]
        self._ot_study.add_trial(optuna.trial.create_trial(
            params=old.params, distributions=old.distributions, intermediate_values=values, state=state,
            value=value if state != optuna.trial.TrialState.FAIL else None,
            user_attrs={**old.user_attrs, "rerun_of_trial": old.number}))


def make_searcher(plan: SearchPlan) -> ConcurrencyLimiter:
    sampler = optuna.samplers.TPESampler(seed=plan.seed, multivariate=True, constant_liar=True)
    storage = open_storage(plan.optuna_storage) if plan.optuna_storage else None
    # a define-by-run space makes OptunaSearch ignore TuneConfig's metric and mode, so it is told directly
    searcher = PrunedAwareOptunaSearch(space=DefineByRun(search_space(plan)), metric=METRIC, mode=MODE,
                                       sampler=sampler, storage=storage, study_name=plan.study_name,
                                       points_to_evaluate=recipe_points(plan) or None, max_epochs=plan.max_epochs,
                                       budget=budget_stopper(plan))
    # Tune keeps just one trial pending with a searcher unless told how many may run at once
    return ConcurrencyLimiter(searcher, max_concurrent=plan.concurrency)


def make_scheduler(plan: SearchPlan):
    if plan.scheduler == "fifo":
        return FIFOScheduler()  # every trial runs all its epochs
    return ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode=MODE, max_t=plan.max_epochs,
                         grace_period=plan.grace_period, reduction_factor=plan.reduction_factor)


def make_trainable(plan: SearchPlan, data: TrialData):
    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_trial, data=data), resources)


def make_tuner(plan: SearchPlan, data: TrialData, resume: bool) -> tune.Tuner:
    """A new tuner, or with ``resume`` one restored from ``plan.experiment_dir`` (finished trials are kept)."""
    trainable = make_trainable(plan, data)
    if resume:
        return tune.Tuner.restore(plan.experiment_dir, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    storage, name = str(Path(plan.experiment_dir).parent), Path(plan.experiment_dir).name
    if "://" in plan.experiment_dir:
        storage, name = plan.experiment_dir.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(plan), scheduler=make_scheduler(plan),
            num_samples=plan.num_samples,  # concurrency: the searcher's ConcurrencyLimiter holds it
            # a new trial runs in the process of a finished one: no second start-up of Python, torch and the data
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, stop=budget_stopper(plan),
            callbacks=stage_callbacks(plan.experiment_dir, plan.disk_reserve),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            verbose=1,
        ),
    )


def budget_stopper(plan: SearchPlan) -> BudgetStopper | None:
    """The stopper that ends the search when its share of the time budget is spent; None without a budget."""
    return BudgetStopper(Path(plan.ledger_root), f"{plan.arch}/search") if plan.ledger_root else None


def close_stale_trials(plan: SearchPlan) -> int:
    """Mark Optuna trials left RUNNING or WAITING as FAIL once Tune has finished the search; returns how many.

    After a driver is killed, the restored searcher comes from Tune's last saved state, so a trial it
    asked Optuna for after that save stays RUNNING in the study although Tune never ran it; a search its time
    budget ended leaves enqueued starting points WAITING. Not for an interrupted search: its running trials go on
    when it is resumed.
    """
    if not plan.optuna_storage:
        return 0
    storage = open_storage(plan.optuna_storage)
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))
    for trial in stale:
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)
