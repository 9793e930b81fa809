"""The local Ray instance's processes, recorded so that a driver killed with SIGKILL leaves none behind.

A driver that starts a local Ray instance writes the process ids (with their start times, so a reused id is never
mistaken for one) of every process below it to a registry in the temp folder, and removes its entry when it shuts
Ray down. The next run on the machine, or ``--resume``, stops the processes of entries whose driver is gone. Reads
``/proc``; where there is none (not Linux) nothing is recorded.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

PROC = Path("/proc")


def registry() -> Path:
    return Path(tempfile.gettempdir()) / f"facetune-ray-{os.getuid()}"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent id, start time in clock ticks) of a live process, None when there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # ended, not yet reaped by its parent
        return None
    return int(fields[1]), int(fields[19])


def _descendants(pids: set[int]) -> set[int]:
    """``pids`` and every live process below them."""
    parents = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat[0]
    found, grew = set(pids), True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return found


def alive(pid: int, started: int) -> bool:
    """Whether the process that had this id and start time is still running."""
    stat = _stat(pid)
    return stat is not None and stat[1] == started


def record() -> None:
    """Write this driver's entry: itself and every process below it now (Ray's services and workers)."""
    me = os.getpid()
    if not PROC.is_dir() or (mine := _stat(me)) is None:
        return
    processes = [{"pid": pid, "started": stat[1]} for pid in sorted(_descendants({me}) - {me})
                 if (stat := _stat(pid)) is not None]
    folder = registry()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{me}.json.tmp"
    try:
        tmp.write_text(json.dumps({"driver": {"pid": me, "started": mine[1]}, "processes": processes}))
        os.replace(tmp, folder / f"{me}.json")
    except OSError:  # a full temp folder must not stop the run; the entry is only for cleaning up after a kill
        tmp.unlink(missing_ok=True)


def forget() -> None:
    """Remove this driver's entry (Ray was shut down in order)."""
    (registry() / f"{os.getpid()}.json").unlink(missing_ok=True)


def reap_leftovers(grace_s: float = 3.0) -> int:
    """Stop the recorded processes of drivers that are gone (SIGTERM, then SIGKILL); returns how many there were."""
    folder = registry()
    if not PROC.is_dir() or not folder.is_dir():
        return 0
    targets: set[int] = set()
    for entry in folder.glob("*.json"):
        try:
            saved = json.loads(entry.read_text())
        except (OSError, ValueError):
            entry.unlink(missing_ok=True)
            continue
        if alive(saved["driver"]["pid"], saved["driver"]["started"]):
            continue
        targets |= {p["pid"] for p in saved["processes"] if alive(p["pid"], p["started"])}
        entry.unlink(missing_ok=True)
    if not targets:
        return 0
    targets = _descendants(targets)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_stat(pid) for pid in targets):
            time.sleep(0.1)
    return len(targets)
