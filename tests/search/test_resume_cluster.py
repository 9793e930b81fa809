"""A search survives its driver being killed, and runs on an existing Ray cluster reached with --address."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import torch

from conftest import ROOT, TINY, run_cli

RAY = str(Path(sys.executable).parent / "ray")


def finished_in_study(db: Path, study: str) -> int:
    if not db.exists():
        return 0
    try:
        trials = optuna.load_study(study_name=study, storage=f"sqlite:///{db}").trials
    except Exception:  # the study is not created yet
        return 0
    return sum(t.state.is_finished() for t in trials)


def terminated_trials(experiment: Path) -> dict[str, str]:
    """trial_id → its result.json text, for the trials Tune's last saved state calls TERMINATED."""
    states = sorted(glob.glob(str(experiment / "experiment_state-*.json")), key=os.path.getmtime)
    if not states:
        return {}
    out = {}
    for meta, _ in json.loads(Path(states[-1]).read_text())["trial_data"]:
        trial = json.loads(meta)
        if trial["status"] == "TERMINATED":
            folder = next(experiment.glob(f"train_trial_{trial['trial_id']}_*"))
            out[trial["trial_id"]] = (folder / "result.json").read_text()
    return out


def test_resume_after_the_driver_is_killed(data_dir, tmp_path):
    args = ["--arch", "scratch", "--data", data_dir, "--storage-path", tmp_path, "--name", "killed",
            "--num-samples", "6", "--concurrency", "1", "--seed", "7", *TINY]
    cmd = [sys.executable, "search/run.py", *map(str, args)]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    experiment = tmp_path / "killed" / "scratch"
    try:
        deadline = time.time() + 300
        while finished_in_study(experiment / "optuna.db", "killed-scratch") < 2:
            assert driver.poll() is None, "the search ended before it could be interrupted"
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.5)
        time.sleep(1.5)  # let Tune save its state once more, as it does every second here
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        try:  # the local Ray processes the driver started
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = terminated_trials(experiment)
    assert 1 <= len(before) < 6

    plan_before = json.loads((experiment / "search_plan.json").read_text())
    # the resumed run names only the experiment: archs, seed, data, budgets, concurrency and --set values come from
    # its saved settings
    result = run_cli("--storage-path", tmp_path, "--name", "killed", "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming 6 trials" in result.stdout and "1 at a time" in result.stdout
    assert not (tmp_path / "killed" / "pretrained").exists(), "the experiment never had a pretrained search"
    assert json.loads((experiment / "search_plan.json").read_text()) == plan_before
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    for t in manifest["archs"]["scratch"]["search"]["trials"]:  # every trial, resumed ones too, trained with seed 7
        ckpt = torch.load(tmp_path / "killed" / t["best_checkpoint"], weights_only=True)
        assert ckpt["config"]["seed"] == 7 and ckpt["config"]["image_size"] == 32
    trials = pd.read_csv(experiment / "trials.csv")
    assert len(trials) == 6 and (trials["status"] != "failed").all()
    assert set(trials["epochs"]) <= {1, 2, 3} and (trials["status"] == "completed").sum() == (trials["epochs"] == 3).sum()
    for trial_id, text in before.items():  # finished trials are kept as they were, never re-run
        folder = next(experiment.glob(f"train_trial_{trial_id}_*"))
        assert (folder / "result.json").read_text() == text
    study = optuna.load_study(study_name="killed-scratch", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_existing_local_cluster_reached_with_address(data_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    # --block keeps `ray start` in the foreground, so ending its process group stops this cluster and no other
    head = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={temp_dir}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert head.poll() is None, "ray start --head exited"
            assert time.time() < deadline, "the Ray head did not come up"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        result = run_cli("--arch", "scratch", "--data", data_dir, "--storage-path", tmp_path, "--name", "cluster",
                         "--num-samples", "2", "--address", f"127.0.0.1:{port}", "--stage", "search", *TINY)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        trials = pd.read_csv(tmp_path / "cluster" / "scratch" / "trials.csv")
        assert len(trials) == 2 and (trials["status"] != "failed").all()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
