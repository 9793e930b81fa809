"""The search's building blocks: the unfreeze/grace rule, pruned bookkeeping, failing trials, study storage."""
import sys

import optuna
import pytest
import ray

from data_utils.dataset import load_faces, make_split
from experiments.config import TrainConfig
from search.hpo.spaces import GRACE, SPACES, Categorical, Float, Int
from search.hpo.study import open_storage, study_storage_file
from search.hpo.trainable import TrialData
from search.hpo.tuning import DefineByRun, PrunedAwareOptunaSearch, SearchPlan, make_tuner, search_space
from search.stages.results import trial_rows


def plan(arch="scratch", **kw):
    values = dict(arch=arch, experiment_dir="/tmp/x/y/" + arch, num_samples=4, max_epochs=10, grace_period=4,
                  reduction_factor=2, concurrency=1, cpus_per_trial=1, gpus_per_trial=0)
    values.update(kw)
    return SearchPlan(**values)


@pytest.mark.parametrize("grace", [1, 3, 5])
def test_unfreeze_epoch_is_tied_to_the_grace_period(grace):
    assert SPACES["pretrained"]["unfreeze_epoch"] == Int(0, GRACE)
    space = search_space(plan("pretrained", grace_period=grace))
    assert space["unfreeze_epoch"] == Int(0, grace - 1)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        DefineByRun(space)(trial)
        # at ASHA's first rung (epoch `grace`) the backbone has trained unfrozen for at least one epoch
        assert trial.params["unfreeze_epoch"] <= grace - 1
        study.tell(trial, 1.0)


def test_spaces_are_valid_config_keys_and_cover_the_required_dimensions():
    fields = set(TrainConfig().to_dict())
    for arch, space in SPACES.items():
        assert set(space) <= fields, arch
        assert {"dropout", "lr"} <= set(space)
    assert "depth" in SPACES["scratch"] and SPACES["scratch"]["lr"] == Float(1e-4, 5e-3, log=True)


def test_unknown_distribution_is_rejected():
    with pytest.raises(TypeError, match="unknown distribution"):
        DefineByRun({"lr": (0.1, 0.2)})


def one_parameter_searcher(max_epochs: int, budget=None) -> PrunedAwareOptunaSearch:
    searcher = PrunedAwareOptunaSearch(space=DefineByRun({"lr": Float(1e-4, 1e-2, log=True)}), metric="objective",
                                       mode="min", max_epochs=max_epochs, budget=budget)
    searcher.set_search_properties(None, None, {})
    return searcher


def test_stopped_trials_are_pruned_with_their_last_value():
    searcher = one_parameter_searcher(max_epochs=10)
    for trial_id in ("stopped", "full", "crashed"):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"objective": 2.0, "training_iteration": 1})
    searcher.on_trial_complete("stopped", {"objective": 1.5, "training_iteration": 2})
    searcher.on_trial_complete("full", {"objective": 0.9, "training_iteration": 10})
    searcher.on_trial_complete("crashed", None, error=True)
    stopped, full, crashed = searcher._ot_study.trials
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.value == 1.5
    assert stopped.intermediate_values == {1: 2.0, 2: 1.5}
    assert full.state == optuna.trial.TrialState.COMPLETE and full.value == 0.9
    assert crashed.state == optuna.trial.TrialState.FAIL


def test_under_a_budget_no_trial_starts_that_could_not_finish(tmp_path):
    from ray.tune.search import Searcher

    from search.budget import Ledger
    from search.hpo.stopper import BudgetStopper

    ledger = Ledger(tmp_path, 100.0)
    ledger.set_limit("scratch/search", 50.0)
    ledger.record("scratch/search", 20.0)  # an earlier run's time: 30 s of the share left
    searcher = one_parameter_searcher(max_epochs=4, budget=BudgetStopper(tmp_path, "scratch/search"))
    assert isinstance(searcher.suggest("first"), dict)  # nothing measured yet: trials start
    for epoch in (1, 2):
        searcher.on_trial_result("first", {"objective": 1.0, "training_iteration": epoch, "time_this_iter_s": 7.0})
    assert isinstance(searcher.suggest("second"), dict)  # 4 epochs × 7 s = 28 s fit in the 30 s left
    searcher.on_trial_result("first", {"objective": 1.0, "training_iteration": 3, "time_this_iter_s": 9.0})
    searcher.on_trial_result("second", {"objective": 1.0, "training_iteration": 1, "time_this_iter_s": 9.0})
    assert searcher.suggest("third") == Searcher.FINISHED  # 4 × 8 s (median) = 32 s do not
    assert len(searcher._ot_study.trials) == 2  # no Optuna trial was asked for the refused one
    # a share no whole trial fits (4 × 20 s > 50 s): every trial is cut short anyway, so trials keep starting
    slow = one_parameter_searcher(max_epochs=4, budget=BudgetStopper(tmp_path, "scratch/search"))
    slow.suggest("a")
    slow.on_trial_result("a", {"objective": 1.0, "training_iteration": 1, "time_this_iter_s": 20.0})
    assert isinstance(slow.suggest("b"), dict)
    # without a budget the epoch times change nothing
    free = one_parameter_searcher(max_epochs=4)
    free.suggest("a")
    free.on_trial_result("a", {"objective": 1.0, "training_iteration": 1, "time_this_iter_s": 1e6})
    assert isinstance(free.suggest("b"), dict)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_raising_and_diverging_trials_do_not_end_the_search(local_ray, data_dir, tmp_path):
    base = TrainConfig.from_dict({"data_dir": str(data_dir), "image_size": 32, "max_images": 200, "epochs": 2,
                                  "depth": 2, "base_width": 8, "dense_units": 16, "batch_size": 32,
                                  "optimizer": "sgd", "grad_clip": 0.0}).to_dict()
    faces = load_faces(data_dir, 32)
    data = TrialData(faces={32: faces}, split=make_split(faces, max_images=200), base_config=base)
    # lr 1e13 diverges (NaN); a negative lr makes the trial raise before it trains
    p = plan(experiment_dir=str(tmp_path / "exp" / "scratch"), num_samples=8, max_epochs=2, grace_period=2,
             concurrency=2, max_failures=1, scheduler="fifo", seed=3,
             space_overrides={"lr": Categorical((1e-3, 1e13, -1.0))})
    grid = make_tuner(p, data, resume=False).fit()
    rows = trial_rows(grid, base, max_epochs=2)
    assert len(rows) == 8
    diverged = rows["reason"].str.contains("diverged", na=False)
    raised = rows["reason"].str.contains("lr must be positive", na=False)
    assert diverged.any() and raised.any()
    assert (rows.loc[diverged | raised, "status"] == "failed").all()
    assert (rows["status"] == "completed").sum() == (~(diverged | raised)).sum() >= 1, rows[["status", "reason"]]
    assert (rows.loc[rows["status"] == "completed", "config/lr"] == 1e-3).all()


def test_study_storage_is_sqlite_or_a_journal_without_sqlalchemy(tmp_path, monkeypatch):
    assert isinstance(open_storage(study_storage_file(tmp_path)), optuna.storages.RDBStorage)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # as on a machine without SQLAlchemy
    other = tmp_path / "other"
    other.mkdir()
    storage = open_storage(study_storage_file(other))
    assert isinstance(storage, optuna.storages.JournalStorage)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert (other / "optuna.journal").is_file()
    monkeypatch.delitem(sys.modules, "sqlalchemy")
    # an experiment that started with a journal keeps using it
    assert isinstance(open_storage(study_storage_file(other)), optuna.storages.JournalStorage)
    assert len(optuna.load_study(study_name="s", storage=open_storage(study_storage_file(other))).trials) == 2


def test_a_field_fixed_by_set_is_not_searched():
    p = plan(experiment_dir="/tmp/x/scratch", num_samples=1, max_epochs=2, grace_period=1, concurrency=1,
             fixed=("lr", "depth"))
    space = search_space(p)
    assert "lr" not in space and "depth" not in space and "dropout" in space


def test_the_study_recipe_is_moved_into_the_space():
    from search.hpo.spaces import Categorical, Float, Int, point_in_space

    space = {"lr": Float(1e-4, 5e-3, log=True), "weight_decay": Float(1e-6, 1e-2, log=True), "depth": Int(2, 4),
             "base_width": Categorical((8, 16)), "optimizer": Categorical(("adam", "sgd"))}
    point = point_in_space({"lr": 1e-3, "weight_decay": 0.0, "depth": 5, "base_width": 64, "optimizer": "adam",
                            "epochs": 100}, space)
    assert point == {"lr": 1e-3, "weight_decay": 1e-6, "depth": 4, "base_width": 16, "optimizer": "adam"}
    assert isinstance(point["depth"], int)


def test_selection_score_is_the_mean_of_the_last_epochs():
    from experiments.objective import SELECTION_EPOCHS, selection_score

    assert SELECTION_EPOCHS == 3
    assert selection_score([0.5, 2.0, 1.0, 1.0, 1.3]) == pytest.approx(1.1)  # not the lucky 0.5
    assert selection_score([0.9]) == 0.9
    with pytest.raises(ValueError):
        selection_score([])
