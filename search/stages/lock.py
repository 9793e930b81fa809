"""One run per experiment: an exclusive lock on the experiment folder, held for the whole run.

The lock is an ``flock`` on ``run.lock`` inside the folder, so it is released however the process ends (a
SIGKILL included) and a stale file never blocks a later run. The holder writes its process id into the file; a
second run of the same experiment is refused at once with that id.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from search.errors import UsageError

LOCK_FILE = "run.lock"


class ExperimentLock:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._file = None
        self._created = False

    def acquire(self) -> "ExperimentLock":
        """Take the lock, or raise ``UsageError`` naming the process that holds it."""
        try:
            self.root.mkdir(parents=True)
            self._created = True
        except FileExistsError:
            pass
        except OSError as err:
            raise UsageError(f"cannot create the experiment folder {self.root} ({err.strerror}); pass a writable "
                             "--storage-path") from None
        handle = open(self.root / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UsageError(f"experiment {self.root} is in use by another run (PID {holder}); wait for it to end, "
                             "or pass --name NEW for a separate experiment") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; with ``remove``, also remove the folder this lock created if nothing else was
        written there (a run refused after taking the lock leaves no half-made experiment)."""
        if self._file is None:
            return
        if remove and self._created and {p.name for p in self.root.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(self.root, ignore_errors=True)
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None
