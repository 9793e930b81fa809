"""The budget stopper: the limit and reserve it reads from the ledger, the time it writes back."""
import pickle
import time

import pytest

from search.budget import Ledger
from search.hpo.stopper import BudgetStopper


def test_stopper_counts_earlier_runs_and_reads_its_limit_from_the_ledger(tmp_path):
    ledger = Ledger(tmp_path, 100.0)
    ledger.record("scratch/search", 9.9)
    ledger.set_limit("scratch/search", 10.0)
    stopper = BudgetStopper(tmp_path, "scratch/search")
    assert not stopper("t1", {})  # trials are never stopped one by one
    time.sleep(0.15)
    assert stopper.stop_all()  # 9.9 s before + this run's time passes the 10 s limit
    assert Ledger(tmp_path).spent["scratch/search"] >= 9.9
    # unpickled (as Tune restores an experiment), it starts its clock again from the ledger and its new limit
    Ledger(tmp_path).set_limit("scratch/search", 60.0)
    restored = pickle.loads(pickle.dumps(stopper))
    assert not restored.stop_all()
    Ledger(tmp_path).set_limit("scratch/retrain", None)
    assert not BudgetStopper(tmp_path, "scratch/retrain").stop_all()  # no limit: time is only recorded


def test_a_search_leaves_room_for_the_shortest_retraining_runs(tmp_path, capsys):
    from search.budget import RETRAIN_PROJECTION_FACTOR, shortest_retrain_epochs

    ledger = Ledger(tmp_path, 1000.0)
    ledger.set_limit("scratch/search", 250.0)  # half of a 500 s share
    ledger.set_reserve("scratch/search", 500.0, shortest_retrain_epochs(24), 1.25)
    stopper = BudgetStopper(tmp_path, "scratch/search")
    assert stopper.limit() == 250.0 and stopper.reserved_seconds() is None  # no epoch seen yet
    # epochs of 20 s (16 training, 3 scoring): a run of 12 epochs on 1.25× the faces takes about 268 s
    for epoch in range(3):
        stopper("t1", {"time_this_iter_s": 20.0, "epoch_seconds": 16.0, "score_seconds": 3.0})
    run = ((16 * 1.25 + 1) * 12 + 3) * RETRAIN_PROJECTION_FACTOR
    assert stopper.reserved_seconds() == pytest.approx(run)
    assert stopper.limit() == pytest.approx(500.0 - run)  # less than the search's half
    # a slower trial (a larger network) is the one the projection keeps
    stopper.observe("t2", {"time_this_iter_s": 30.0, "epoch_seconds": 26.0, "score_seconds": 3.0})
    assert stopper.reserved_seconds() > run
    # with the clock past the earlier end the whole search stops, and says why
    Ledger(tmp_path).record("scratch/search", 240.0)
    late = BudgetStopper(tmp_path, "scratch/search")
    late("t1", {"time_this_iter_s": 20.0, "epoch_seconds": 16.0, "score_seconds": 3.0})
    assert late.stop_all()
    assert "the shortest allowed" in capsys.readouterr().out
    # a share with room for both stages keeps the search's half
    Ledger(tmp_path).set_reserve("scratch/search", 2000.0, 12, 1.25)
    roomy = BudgetStopper(tmp_path, "scratch/search")
    roomy.observe("t1", {"time_this_iter_s": 20.0, "epoch_seconds": 16.0, "score_seconds": 3.0})
    assert roomy.limit() == 250.0
    # the times seen are not pickled with the experiment: a restored run projects from its own epochs
    assert pickle.loads(pickle.dumps(stopper)).reserved_seconds() is None


@pytest.mark.parametrize("limit, share, iter_s, epoch_s, gives_way", [
    (868.0, 1736.0, 108.0, 95.0, True),  # the whole UTKFace in 30 minutes: one wave of trials, retraining starved
    (265.0, 550.0, 25.0, 21.0, False),  # the 5k in 9½ minutes: one wave, but room for full-length retraining runs
    (3570.0, 7140.0, 110.0, 97.0, False),  # the whole UTKFace in 2 hours: several waves fit
])
def test_a_search_that_can_only_compare_its_seeded_configurations_gives_way(tmp_path, capsys, limit, share, iter_s,
                                                                           epoch_s, gives_way):
    ledger = Ledger(tmp_path, 2 * share)
    ledger.set_limit("pretrained/search", limit)
    ledger.set_reserve("pretrained/search", share, 4, 1.21, trial_epochs=8)
    stopper = BudgetStopper(tmp_path, "pretrained/search")
    assert not stopper.gives_way() and not stopper.stop_all()  # no epoch seen yet
    stopper("t1", {"time_this_iter_s": iter_s, "epoch_seconds": epoch_s, "score_seconds": 10.0})
    assert stopper.gives_way() is gives_way and stopper.stop_all() is gives_way
    assert ("goes to the retraining" in capsys.readouterr().out) is gives_way
    # without the trials' length in the reserve (sampled trials in the first wave) it never gives way
    Ledger(tmp_path).set_reserve("pretrained/search", share, 4, 1.21)
    plain = BudgetStopper(tmp_path, "pretrained/search")
    plain("t1", {"time_this_iter_s": iter_s, "epoch_seconds": epoch_s, "score_seconds": 10.0})
    assert not plain.gives_way() and not plain.stop_all()
