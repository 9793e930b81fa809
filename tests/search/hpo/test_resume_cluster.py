"""A search runs on an existing Ray cluster reached with --address (a killed driver: tests/search/hpo/test_interrupts.py)."""
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

import pandas as pd
import pytest
from conftest import ROOT, run_cli

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_trials_pack_on_a_declared_gpu_of_an_existing_cluster(data_dir, tmp_path):
    """A real `ray start --head` cluster that declares 1 GPU (there is none): --gpus-per-trial 0.25 runs 4 trials at
    once on it, each told its share; the trials train on the CPU, since CUDA is not there."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    # --block keeps `ray start` in the foreground, so ending its process group stops this cluster and no other
    head = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=4", "--num-gpus=1",
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
                         "--num-samples", "4", "--address", f"127.0.0.1:{port}", "--stage", "search",
                         "--gpus-per-trial", "0.25", "--grace-period", "3", "--max-epochs", "3", "--preset", "smoke",
                         # trials of a few seconds, so that their overlap outlasts the staggered starts
                         "--set", "image_size=64", "max_images=800", "batch_size=32")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "4 at a time (1 CPU, 0.25 GPU each)" in result.stdout
        trials = pd.read_csv(tmp_path / "cluster" / "scratch" / "trials.csv")
        assert len(trials) == 4 and (trials["status"] == "completed").all()
        assert (trials["gpu_share"] == 0.25).all() and (trials["cpus"] == 1).all()
        intervals = []
        for t in json.loads((tmp_path / "cluster" / "manifest.json").read_text())["archs"]["scratch"]["search"]["trials"]:
            progress = pd.read_csv(tmp_path / "cluster" / t["path"] / "progress.csv")
            intervals.append((progress["started_at"].iloc[0], progress["started_at"].iloc[0] + progress["time_total_s"].iloc[-1]))
        assert most_at_once(intervals) == 4
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_node(args: list[str], env: dict) -> subprocess.Popen:
    # --block keeps `ray start` in the foreground, so ending its process group stops this node and no other
    return subprocess.Popen([RAY, "start", "--block", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_node(node: subprocess.Popen, sig=signal.SIGTERM) -> None:
    try:
        os.killpg(node.pid, sig)
        node.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)


def kill_node(node: subprocess.Popen) -> None:
    """Lose a node as a crashed machine would: SIGKILL its `ray start`, raylet and every worker process under it
    (Ray starts some of them in sessions of their own, so the process group is not enough)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    doomed, todo = [], [node.pid]
    while todo:
        pid = todo.pop()
        doomed.append(pid)
        todo += children.get(pid, [])
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.wait(timeout=60)


@pytest.mark.slow
def test_two_nodes_and_a_lost_node(data_dir, tmp_path):
    """A head and a worker on this machine form a 2-node cluster; the search runs a trial on each, records each
    trial's node, and when the worker is killed mid-trial its trial is retried from its checkpoint on the head."""
    port = free_port()
    # a node joining a Ray 2.60 head sends the head's token (~/.ray/auth_token) only in token mode
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    head = start_node(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp_dir}"],
                      env)
    worker = None
    driver = None
    try:
        deadline = time.time() + 120
        while True:
            assert head.poll() is None and time.time() < deadline, "the Ray head did not come up"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        worker = start_node([f"--address=127.0.0.1:{port}", "--num-cpus=1"], env)
        probe = "import ray, sys; ray.init(address=sys.argv[1]); print(len([n for n in ray.nodes() if n['Alive']]))"
        while subprocess.run([sys.executable, "-c", probe, f"127.0.0.1:{port}"], capture_output=True, text=True,
                             env=env).stdout.strip() != "2":
            assert worker.poll() is None and time.time() < deadline, "the worker did not join"
            time.sleep(1)
        args = ["--arch", "scratch", "--data", data_dir, "--storage-path", tmp_path, "--name", "two", "--num-samples",
                "2", "--address", f"127.0.0.1:{port}", "--stage", "search", "--max-epochs", "12", "--grace-period",
                "12", "--max-failures", "3", "--preset", "smoke", "--set", "image_size=32", "max_images=300",
                "batch_size=32"]
        driver = subprocess.Popen([sys.executable, "search/run.py", *map(str, args)], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        experiment = tmp_path / "two" / "scratch"
        deadline = time.time() + 300
        while True:  # both trials running, each past its first epoch
            progress = [pd.read_csv(p) for p in experiment.glob("train_trial_*/progress.csv") if p.stat().st_size]
            if len(progress) == 2 and all(len(p) >= 1 and len(p) < 12 for p in progress):
                break
            assert driver.poll() is None and time.time() < deadline, "the trials did not start on both nodes"
            time.sleep(0.2)
        assert len({p["node_id"].iloc[-1] for p in progress}) == 2, "one trial per node"
        kill_node(worker)
        out, _ = driver.communicate(timeout=400)
        assert driver.returncode == 0, out[-3000:]
        trials = pd.read_csv(experiment / "trials.csv")
        assert len(trials) == 2 and (trials["status"] == "completed").all() and (trials["epochs"] == 12).all()
        assert sorted(trials["nodes"]) == [1, 2], "the lost node's trial finished on the head"
        for folder in experiment.glob("train_trial_*"):
            progress = pd.read_csv(folder / "progress.csv")
            assert progress["epoch"].max() == 12
            if progress["node_id"].nunique() == 1:
                assert progress["epoch"].is_unique
                continue
            # the lost node's trial went on from its last checkpoint that reached storage, not from the start:
            # only the epoch whose checkpoint the crash cut off may be trained twice
            on_head = progress[progress["node_id"] == progress["node_id"].iloc[-1]]
            assert on_head["epoch"].iloc[0] > 1 and progress["epoch"].duplicated().sum() <= 1
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for node in (worker, head):
            if node is not None:
                stop_node(node)
        shutil.rmtree(temp_dir, ignore_errors=True)
