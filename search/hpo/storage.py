"""Room on the experiment's disk, and the last good copy of Tune's state: a full disk or a failed write loses nothing.

Before a run starts, its storage must hold one round of checkpoints (``check_room``). While a Tune experiment runs,
``DiskGuard`` ends it cleanly, as an interrupt does, once the disk's free space falls under what the trials in
flight may still write; it holds a small file (``BALLAST``) from the stage's start and deletes it then, so that
Tune's last snapshot has room even where something else filled the disk to its last byte. After every snapshot
Tune writes it keeps a copy of the snapshot that reads back (``LAST_GOOD``, written then renamed). Tune overwrites its snapshot in place, so a write that fails leaves a
truncated file; ``recover_state`` puts the last good copy back before a resume, or refuses the resume where
there is none, instead of letting Tune start the experiment over.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search.hpo import interrupts
from search.hpo.loggers import trial_loggers

LAST_GOOD = ".last-good-state"
BALLAST = ".disk-reserve"  # held while a stage runs, given up to let its last snapshot be written on a full disk
BALLAST_BYTES = 4 * 2**20
STATE_FILES = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json", "tuner.pkl")
STATE_BYTES = 8 * 2**20  # Tune's snapshot, the Optuna study, summaries and the report, with room to spare
CHECK_EVERY_S = 1.0
MiB = 2**20


class StorageError(OSError):
    """The experiment's storage cannot take what the run must write; the message names the folder and the fix."""


def megabytes(n: float) -> str:
    return f"{n / MiB:.0f} MB" if n >= 10 * MiB else f"{n / MiB:.1f} MB"


def free_bytes(folder: str | os.PathLike) -> int:
    """Free bytes on the disk that holds ``folder`` (or would, once created)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def checkpoint_bytes(config: dict[str, Any]) -> int:
    """About how large one trial checkpoint of ``config`` is: the weights, the optimizer's two moments per weight
    (Adam-family) and, with a moving average, its copy; the rest is small."""
    from experiments.config import TrainConfig
    from models import build_model

    cfg = TrainConfig.from_dict(config)
    model = build_model(cfg, load_weights=False)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return int(weights * (4 if cfg.ema_decay else 3) * 1.1)


def needed_bytes(checkpoint: int, concurrency: int) -> int:
    """What the trials running at once may still write (each its next checkpoint beside its kept best one), with
    Tune's snapshot: under this much free space the experiment is stopped."""
    return 2 * concurrency * checkpoint + STATE_BYTES


def check_room(folder: str | os.PathLike, checkpoint: int, concurrency: int) -> None:
    """Refuse, before any work, a run whose storage cannot take its first round of checkpoints."""
    need = 2 * needed_bytes(checkpoint, concurrency)
    free = free_bytes(folder)
    if free < need:
        raise StorageError(f"the disk holding {folder} has {megabytes(free)} free; this run needs at least "
                           f"{megabytes(need)} there ({concurrency} trial(s) at once, checkpoints of up to "
                           f"{megabytes(checkpoint)}); free space or pass --storage-path on a larger disk")


def _newest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def _readable(path: Path | None) -> bool:
    """Whether a snapshot file reads back whole: a pickle (some are named .json) ends with its STOP opcode (loading
    it would run the searcher's set-up); JSON parses."""
    try:
        data = path.read_bytes() if path is not None else b""
    except OSError:
        return False
    if not data:
        return False
    if data[:1] == b"\x80":  # pickle protocol 2 and later
        return data.endswith(b".")
    try:
        json.loads(data)
    except ValueError:  # truncated or half-written
        return False
    return True


def snapshot_files(folder: Path) -> list[Path]:
    """The newest file of each kind of Tune snapshot in an experiment folder."""
    return [p for p in (_newest(folder, pattern) for pattern in STATE_FILES) if p is not None]


def save_last_good(folder: Path) -> bool:
    """Copy Tune's snapshot to ``LAST_GOOD`` when every file of it reads back; returns whether it did."""
    files = snapshot_files(folder)
    if not any(p.name.startswith("experiment_state-") for p in files) or not all(_readable(p) for p in files):
        return False
    good = folder / LAST_GOOD
    good.mkdir(exist_ok=True)
    for path in files:
        tmp = good / f"{path.name}.tmp"
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, good / path.name)
        except OSError:  # no room for the copy: the previous one stays whole
            tmp.unlink(missing_ok=True)
            return False
    for old in good.iterdir():  # copies of an older snapshot's names
        if old.name not in {p.name for p in files}:
            old.unlink(missing_ok=True)
    return True


def recover_state(experiment_dir: str) -> str | None:
    """Before a resume: put the last good snapshot back where Tune's newest one does not read back.

    Returns a note when it did; raises ``StorageError`` when the snapshot is damaged and no good copy exists.
    """
    if "://" in experiment_dir:
        return None
    folder = Path(experiment_dir)
    files = snapshot_files(folder)
    if not files or all(_readable(p) for p in files):
        return None
    good = folder / LAST_GOOD
    copies = sorted(good.glob("*")) if good.is_dir() else []
    if not copies or not all(_readable(p) for p in copies):
        broken = ", ".join(p.name for p in files if not _readable(p))
        raise StorageError(f"the experiment's state in {folder} is damaged ({broken}) and no good copy of it exists, "
                           "so it cannot be resumed; start a new experiment with --name NEW")
    for path in files:  # the damaged snapshot goes; Tune then reads the copy's files (the newest left)
        if not _readable(path):
            path.unlink()
    for copy in copies:
        tmp = folder / f"{copy.name}.tmp"
        shutil.copyfile(copy, tmp)
        os.replace(tmp, folder / copy.name)
    return f"the last snapshot of {folder} was damaged (a failed write); resuming from the last good one"


class DiskGuard(Callback):
    """Stops the experiment cleanly when its disk's free space falls under ``reserve`` bytes, and keeps the last
    good copy of Tune's snapshot after every step that wrote one. Plain fields only: it pickles with the
    experiment."""

    def __init__(self, experiment_dir: str, reserve: int):
        self.experiment_dir, self.reserve = experiment_dir, int(reserve)
        self._checked, self._seen = 0.0, None

    def __getstate__(self):
        return {**self.__dict__, "_checked": 0.0, "_seen": None}

    def _local(self) -> Path | None:
        return None if "://" in self.experiment_dir else Path(self.experiment_dir)

    def setup(self, **info):
        folder = self._local()
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(folder / BALLAST, "wb") as f:
                f.write(b"\0" * BALLAST_BYTES)
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # no room even for this: the stage is stopped at its first step
            (folder / BALLAST).unlink(missing_ok=True)

    def on_step_begin(self, iteration, trials, **info):
        folder = self._local()
        if folder is None or time.monotonic() - self._checked < CHECK_EVERY_S:
            return
        self._checked = time.monotonic()
        free = free_bytes(folder)
        if free < self.reserve:
            (folder / BALLAST).unlink(missing_ok=True)
            interrupts.stop_requested(f"the disk holding {folder} has {megabytes(free)} free, under the "
                                      f"{megabytes(self.reserve)} the running trials may still write")

    def on_step_end(self, iteration, trials, **info):
        self._keep_snapshot()

    def on_experiment_end(self, trials, **info):
        self._keep_snapshot()
        if (folder := self._local()) is not None:
            (folder / BALLAST).unlink(missing_ok=True)

    def _keep_snapshot(self) -> None:
        folder = self._local()
        state = _newest(folder, STATE_FILES[0]) if folder is not None else None
        if state is None:
            return
        try:
            stamp = (state.name, state.stat().st_mtime_ns, state.stat().st_size)
        except OSError:
            return
        if stamp != self._seen and save_last_good(folder):
            self._seen = stamp


def stage_callbacks(experiment_dir: str, disk_reserve: int) -> list[Callback]:
    """What every Tune stage of a run writes and watches: each trial's log files (``loggers.trial_loggers``), an
    interrupt (``interrupts.ResendStop``) and, given a reserve, its disk (``DiskGuard``)."""
    return [*trial_loggers(), interrupts.ResendStop(),
            *([DiskGuard(experiment_dir, disk_reserve)] if disk_reserve else [])]
