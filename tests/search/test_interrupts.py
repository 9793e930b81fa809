"""Interrupts are a normal way to stop: real signals to a real search, resumed to completion each time.

One experiment goes through every interrupt in turn (SIGINT to the process group during its search, SIGTERM to the
driver during the resumed search, SIGINT to the process group as its retraining starts), with a twin run of the same
name started beside it, and is resumed to the end; each test reads what one step left.
"""
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import ROOT, run_cli
from search.storage import snapshot_files

TRIALS = 8
# one trial at a time, so that the search is still running when each signal is sent
ARGS = ["--arch", "scratch", "--preset", "smoke", "--max-images", "300", "--image-size", "32", "--max-epochs", "2",
        "--grace-period", "1", "--num-samples", str(TRIALS), "--top-k", "1", "--seeds", "2", "--seed", "3",
        "--concurrency", "1"]


def start(*args):
    return subprocess.Popen([sys.executable, "search/run.py", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})


def finished_in_study(root: Path) -> int:
    db = root / "scratch" / "optuna.db"
    try:
        trials = optuna.load_study(study_name=f"{root.name}-scratch", storage=f"sqlite:///{db}").trials
    except Exception:  # not created yet
        return 0
    return sum(t.state.is_finished() for t in trials)


def wait_for(driver, ready, what, timeout=240):
    deadline = time.time() + timeout
    while not ready():
        assert driver.poll() is None, f"the run ended before {what}: {driver.communicate()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def interrupt(driver, sig, group):
    os.killpg(driver.pid, sig) if group else os.kill(driver.pid, sig)
    out, err = driver.communicate(timeout=120)
    return {"code": driver.returncode, "stdout": out, "stderr": err}


def tune_statuses(experiment: Path) -> dict[str, str]:
    state = next(p for p in snapshot_files(experiment) if p.name.startswith("experiment_state-"))
    return {t["trial_id"]: t["status"] for t in (json.loads(m) for m, _ in json.loads(state.read_text())["trial_data"])}


@pytest.fixture(scope="module")
def chain(data_dir, tmp_path_factory):
    storage = tmp_path_factory.mktemp("interrupts")
    root = storage / "chain"
    common = ["--storage-path", storage, "--name", "chain"]
    steps = {}
    driver = start(*ARGS, "--data", data_dir, *common)
    wait_for(driver, lambda: (root / "run.lock").is_file() and (root / "run.lock").read_text().strip(), "the lock")
    steps["twin"] = run_cli(*ARGS, "--data", data_dir, *common)
    steps["twin_pid"] = driver.pid
    wait_for(driver, lambda: finished_in_study(root) >= 2, "two trials finished")
    steps["sigint"] = interrupt(driver, signal.SIGINT, group=True)
    steps["sigint_trials"] = pd.read_csv(root / "scratch" / "trials.csv", dtype={"trial_id": str})
    steps["sigint_tune"] = tune_statuses(root / "scratch")
    steps["sigint_retrain"] = (root / "scratch-retrain").exists()

    driver = start(*common, "--resume")
    wait_for(driver, lambda: finished_in_study(root) >= 5, "five trials finished")
    steps["sigterm"] = interrupt(driver, signal.SIGTERM, group=False)
    steps["sigterm_tune"] = tune_statuses(root / "scratch")

    driver = start(*common, "--resume")
    wait_for(driver, lambda: (root / "scratch-retrain").exists(), "the retraining started")
    steps["retrain_sigint"] = interrupt(driver, signal.SIGINT, group=True)
    steps["retrain_sigint_manifest"] = json.loads((root / "manifest.json").read_text())["archs"]["scratch"]

    steps["resumed"] = run_cli(*common, "--resume")
    steps["root"] = root
    return steps


def assert_stopped(step, sig):
    assert step["code"] == 128 + sig, step["stderr"][-3000:]
    last = step["stderr"].strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signal.Signals(sig).name}") and "--resume" in last, last
    assert "Traceback" not in step["stderr"]


def test_ctrl_c_stops_the_search_cleanly_and_says_how_to_resume(chain):
    assert_stopped(chain["sigint"], signal.SIGINT)
    trials = chain["sigint_trials"]
    assert len(trials) < TRIALS, "the search ran on after Ctrl-C"
    assert not trials["reason"].str.contains("budget", na=False).any(), "no budget was set"
    assert (trials["status"] == "interrupted").any()
    unfinished = {t for t, status in chain["sigint_tune"].items() if status not in ("TERMINATED", "ERROR")}
    assert unfinished == set(trials.loc[trials["status"] == "interrupted", "trial_id"])
    assert not chain["sigint_retrain"], "a retraining started from half a search"
    assert "report:" not in chain["sigint"]["stdout"]


def test_resume_after_ctrl_c_continues_the_same_experiment_to_its_planned_trials(chain):
    resumed = chain["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "UpdateFinishedTrialError" not in resumed.stderr
    root = chain["root"]
    statuses = tune_statuses(root / "scratch")
    assert len(statuses) == TRIALS and set(statuses.values()) == {"TERMINATED"}
    # the trials the first interrupt caught ran on, under the same ids
    assert set(chain["sigint_tune"]) <= set(statuses)
    trials = optuna.load_study(study_name="chain-scratch", storage=f"sqlite:///{root / 'scratch' / 'optuna.db'}").trials
    counts = collections.Counter(t.state.name for t in trials)
    assert counts["COMPLETE"] + counts["PRUNED"] == TRIALS, counts
    assert (root / "report" / "report.md").is_file()


def test_ctrl_c_as_the_retraining_starts_is_a_clean_stop(chain):
    assert_stopped(chain["retrain_sigint"], signal.SIGINT)
    assert "retrain" not in chain["retrain_sigint_manifest"], "an interrupted retraining handed on results"
    runs = pd.read_csv(chain["root"] / "scratch-retrain" / "retrain_runs.csv")
    assert len(runs) == 2 and (runs["status"] == "completed").all()


def test_sigterm_stops_the_search_cleanly(chain):
    assert_stopped(chain["sigterm"], signal.SIGTERM)
    assert "SIGTERM received" not in chain["sigterm"]["stderr"], "Ray's abort handler ran"
    assert len(chain["sigterm_tune"]) < TRIALS or set(chain["sigterm_tune"].values()) != {"TERMINATED"}


def test_a_second_run_of_the_same_experiment_is_refused_with_the_holders_pid(chain):
    twin = chain["twin"]
    assert twin.returncode == 2, twin.stdout[-2000:] + twin.stderr[-2000:]
    assert f"in use by another run (PID {chain['twin_pid']})" in twin.stderr
    assert len(twin.stderr.strip().splitlines()) == 1


def test_every_finished_study_is_consistent(chain):
    """No WAITING or RUNNING leftovers, and every trial's last epoch recorded."""
    root = chain["root"]
    trials = optuna.load_study(study_name="chain-scratch", storage=f"sqlite:///{root / 'scratch' / 'optuna.db'}").trials
    states = collections.Counter(t.state.name for t in trials)
    assert not states["WAITING"] and not states["RUNNING"], states
    epochs = pd.read_csv(root / "scratch" / "trials.csv", dtype={"trial_id": str})["epochs"]
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert sorted(max(t.intermediate_values) for t in done) == sorted(epochs)
    assert all(t.state.name != "COMPLETE" or max(t.intermediate_values) == 2 for t in done)


def test_a_search_of_fewer_trials_than_starting_points_enqueues_only_those_it_runs():
    from search.tuning import SearchPlan, recipe_points

    plan = SearchPlan(arch="scratch", experiment_dir="x", num_samples=2, max_epochs=2, grace_period=1,
                      reduction_factor=2, concurrency=1, cpus_per_trial=1, gpus_per_trial=0)
    assert len(recipe_points(plan)) == 2
