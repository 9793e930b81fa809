"""Interrupts are a normal way to stop: real signals to a real search, resumed to completion each time.

One experiment goes through every interrupt in turn (SIGINT to the process group during its search, SIGTERM to the
driver during the resumed search, SIGKILL to the driver during the search resumed again, SIGINT to the process group
as its retraining starts), with a twin run of the same name started beside it, and is resumed to the end, each
resume naming only the experiment; each test reads what one step left.
"""
import collections
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import ROOT, run_cli

from search.hpo import ray_processes
from search.hpo.storage import snapshot_files

TRIALS = 10
# one trial at a time, so that the search is still running when each signal is sent
# (the image size and subset go through --set: a --set of a field a flag owns must reach every stage and resume)
ARGS = ["--arch", "scratch", "--preset", "smoke", "--max-epochs", "2", "--grace-period", "1", "--num-samples",
        str(TRIALS), "--top-k", "1", "--seeds", "2", "--seed", "3", "--concurrency", "1",
        "--set", "image_size=32", "max_images=600"]


def start(*args):
    return subprocess.Popen([sys.executable, "search/run.py", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})


def study_states(root: Path) -> collections.Counter:
    """The study's trial states, read through a read-only connection: opening the file with Optuna's storage would
    create its tables, racing the run that is creating them (a UNIQUE constraint failure that ends the run)."""
    db = root / "scratch" / "optuna.db"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            states = [row[0] for row in con.execute("SELECT state FROM trials")]
    except sqlite3.Error:  # not created yet
        return collections.Counter()
    finished = {"COMPLETE", "PRUNED", "FAIL"}  # optuna's TrialState.is_finished
    return collections.Counter("finished" if state in finished else state for state in states)


def finished_in_study(root: Path) -> int:
    return study_states(root)["finished"]


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


def finished_in_snapshot(experiment: Path) -> int:
    try:
        return sum(status == "TERMINATED" for status in tune_statuses(experiment).values())
    except (StopIteration, ValueError):  # not written yet, or caught half-written
        return 0


def results_of_finished(experiment: Path) -> dict[str, str]:
    """trial_id → its result.json text, for the trials Tune's last snapshot calls TERMINATED."""
    return {t: (next(experiment.glob(f"train_trial_{t}_*")) / "result.json").read_text()
            for t, status in tune_statuses(experiment).items() if status == "TERMINATED"}


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
    wait_for(driver, lambda: (lambda n: n["finished"] >= 2 and n["RUNNING"] >= 1)(study_states(root)),
             "two trials finished and a third running")
    steps["sigint"] = interrupt(driver, signal.SIGINT, group=True)
    steps["sigint_trials"] = pd.read_csv(root / "scratch" / "trials.csv", dtype={"trial_id": str})
    steps["sigint_tune"] = tune_statuses(root / "scratch")
    steps["sigint_retrain"] = (root / "scratch-retrain").exists()

    steps["plan"] = (root / "scratch" / "search_plan.json").read_text()
    driver = start(*common, "--resume")
    wait_for(driver, lambda: finished_in_study(root) >= 4, "four trials finished")
    steps["sigterm"] = interrupt(driver, signal.SIGTERM, group=False)
    steps["sigterm_tune"] = tune_statuses(root / "scratch")

    driver = start(*common, "--resume")
    # killed as soon as Tune's snapshot (saved every second here) holds two more finished trials
    saved = finished_in_snapshot(root / "scratch")
    wait_for(driver, lambda: finished_in_snapshot(root / "scratch") >= saved + 2, "two more trials in Tune's snapshot")
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate()
    entry = ray_processes.registry() / f"{driver.pid}.json"
    steps["sigkill_recorded"] = json.loads(entry.read_text())["processes"] if entry.is_file() else []
    steps["sigkill_entry"] = entry
    steps["sigkill_finished"] = results_of_finished(root / "scratch")

    assert not (root / "scratch-retrain").exists(), "the killed run reached its retraining; give the search more trials"
    driver = start(*common, "--resume")
    wait_for(driver, lambda: (root / "scratch-retrain").exists(), "the retraining started")
    steps["retrain_sigint"] = interrupt(driver, signal.SIGINT, group=True)
    steps["retrain_sigint_manifest"] = json.loads((root / "manifest.json").read_text())["archs"]["scratch"]
    steps["sigkill_left"] = [p for p in steps["sigkill_recorded"] if ray_processes.alive(p["pid"], p["started"])]

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
    assert not trials["reason"].astype(str).str.contains("budget").any(), "no budget was set"
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


def test_after_sigkill_resume_stops_the_ray_processes_left_behind_and_keeps_finished_trials(chain):
    assert chain["sigkill_recorded"], "the killed driver recorded no Ray processes"
    assert not chain["sigkill_left"] and not chain["sigkill_entry"].exists(), chain["sigkill_left"]
    experiment = chain["root"] / "scratch"
    for trial_id, text in chain["sigkill_finished"].items():  # finished trials are kept as they were, never re-run
        assert (next(experiment.glob(f"train_trial_{trial_id}_*")) / "result.json").read_text() == text
    assert 1 <= len(chain["sigkill_finished"]) < TRIALS


def test_every_resume_restores_the_saved_settings(chain):
    resumed, root = chain["resumed"], chain["root"]
    assert f"resuming {TRIALS} trials" in resumed.stdout and "1 at a time" in resumed.stdout
    assert (root / "scratch" / "search_plan.json").read_text() == chain["plan"]
    manifest = json.loads((root / "manifest.json").read_text())
    for t in manifest["archs"]["scratch"]["search"]["trials"]:  # every trial, resumed ones too
        ckpt = torch.load(root / t["best_checkpoint"], weights_only=True)
        assert ckpt["config"]["seed"] == 3 and ckpt["config"]["image_size"] == 32
    trials = pd.read_csv(root / "scratch" / "trials.csv")
    assert len(trials) == TRIALS and (trials["status"] != "failed").all()
    assert (trials["status"] == "completed").sum() == (trials["epochs"] == 2).sum()


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
    from search.hpo.tuning import SearchPlan, recipe_points

    plan = SearchPlan(arch="scratch", experiment_dir="x", num_samples=2, max_epochs=2, grace_period=1,
                      reduction_factor=2, concurrency=1, cpus_per_trial=1, gpus_per_trial=0)
    assert len(recipe_points(plan)) == 2
