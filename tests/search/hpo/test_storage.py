"""Storage failures lose nothing: a disk that fills during a search ends the run in one line, and --resume after
freeing space continues with every earlier trial; a state that cannot be restored is refused, not started over."""
import collections
import json
import os
import signal
import subprocess
import sys
import uuid

import optuna
import pytest
from conftest import ROOT, run_cli
from test_interrupts import ARGS, finished_in_study, tune_statuses, wait_for

from search.hpo.storage import LAST_GOOD, recover_state, save_last_good, snapshot_files

TRIALS = 6
SEARCH = [*ARGS[:ARGS.index("--num-samples") + 1], str(TRIALS), *ARGS[ARGS.index("--num-samples") + 2:]]


@pytest.fixture
def small_disk(tmp_path):
    """A 128 MB tmpfs of its own (needs root and mount; skipped where either is missing)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder, keep_bytes=0):
    """Fill the disk of ``folder`` until ``keep_bytes`` are left (or writing fails)."""
    path = folder / f"filler-{uuid.uuid4().hex}"
    block = b"\0" * 2**20
    with open(path, "wb") as f:
        try:
            while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > keep_bytes + len(block):
                f.write(block)
                f.flush()
        except OSError:
            pass
    return path


def test_a_disk_that_fills_during_the_search_ends_the_run_and_resume_continues(data_dir, small_disk):
    common = ["--storage-path", small_disk, "--name", "full"]
    root = small_disk / "full"
    driver = subprocess.Popen([sys.executable, "search/run.py", *SEARCH, "--data", str(data_dir), *map(str, common)],
                              cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    try:
        wait_for(driver, lambda: finished_in_study(root) >= 2, "two trials finished")
        before = {t for t, s in tune_statuses(root / "scratch").items() if s == "TERMINATED"}
        filler = fill(small_disk)
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode not in (0, 2), out[-2000:] + err[-2000:]
    last = err.strip().splitlines()[-1]
    assert str(small_disk) in last and "free" in last and "--resume" in last, err[-3000:]
    assert "MB" in last  # the space needed
    filler.unlink()
    resumed = run_cli(*common, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    statuses = tune_statuses(root / "scratch")
    assert len(statuses) == TRIALS and set(statuses.values()) == {"TERMINATED"}
    assert before <= set(statuses), "an earlier trial was dropped"
    study = optuna.load_study(study_name="full-scratch", storage=f"sqlite:///{root / 'scratch' / 'optuna.db'}")
    counts = collections.Counter(t.state.name for t in study.trials)
    assert counts["COMPLETE"] + counts["PRUNED"] == TRIALS, counts


def test_a_damaged_snapshot_is_restored_from_the_last_good_copy_or_refused(tmp_path):
    folder = tmp_path / "scratch"
    folder.mkdir()
    state = folder / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text(json.dumps({"trial_data": [], "runner_data": {}}))
    (folder / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(b"\x80\x05K\x01.")
    assert save_last_good(folder) and len(list((folder / LAST_GOOD).iterdir())) == 2
    assert recover_state(str(folder)) is None  # nothing damaged
    state.write_text('{"trial_data": [')  # a write that failed half way
    assert "last good" in recover_state(str(folder))
    assert json.loads(state.read_text()) == {"trial_data": [], "runner_data": {}}
    state.write_text("")
    for copy in (folder / LAST_GOOD).iterdir():
        copy.unlink()
    with pytest.raises(OSError, match="cannot be resumed"):
        recover_state(str(folder))
    assert len(snapshot_files(folder)) == 2
