"""The manifest between stages: what the search and the retraining made, where it is, and how it ended.

``<experiment>/manifest.json`` is written by the search (per architecture: Tune's experiment, the Optuna
storage and study name, every trial's folder, status and best checkpoint) and extended by the retraining
(every run's folder, final checkpoint and test predictions, the marked model). The report and export read
it and nothing else to find those files: no stage globs another library's folder names or rebuilds a name.
Paths inside the experiment folder are stored relative to it, so a moved experiment folder still works.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from search.files import write_json

MANIFEST_FILE = "manifest.json"
VERSION = 1


class ManifestError(ValueError):
    """The manifest is missing, unreadable, or does not list what a stage needs; the message names the fix."""


def relative(root: Path, path: str | os.PathLike | None) -> str | None:
    """``path`` relative to the experiment folder when it lies inside it; else as given (absolute or a URI)."""
    if path is None:
        return None
    text = str(path)
    if "://" in text:
        return text
    try:
        return str(Path(text).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return text


def locate(root: Path, stored: str | None) -> Path | None:
    """The local path of a stored entry (None for a URI, which only Tune's own restore reads)."""
    if stored is None or "://" in stored:
        return None
    path = Path(stored)
    return path if path.is_absolute() else Path(root) / path


def load(root: Path) -> dict[str, Any]:
    """The experiment's manifest; an empty one when the experiment has none yet."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        return {"version": VERSION, "archs": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ManifestError(f"cannot read {path} ({err}); run the search stage again with --resume") from None
    if manifest.get("version") != VERSION:
        raise ManifestError(f"{path} has version {manifest.get('version')!r}, expected {VERSION}")
    return manifest


def require(root: Path, arch: str, stage: str) -> dict[str, Any]:
    """The manifest entry of ``arch``'s ``stage`` ('search' or 'retrain'), or a ManifestError naming the fix."""
    entry = load(root)["archs"].get(arch, {}).get(stage)
    if entry is None:
        raise ManifestError(f"{Path(root) / MANIFEST_FILE} lists no {arch} {stage}; run `python search/run.py --name "
                            f"{Path(root).name} --storage-path {Path(root).parent} --arch {arch} --stage "
                            f"{'search --resume' if stage == 'search' else stage}` first")
    return entry


def record(root: Path, arch: str, stage: str, entry: dict[str, Any]) -> None:
    """Set ``arch``'s ``stage`` entry and write the manifest atomically."""
    manifest = load(root)
    manifest["archs"].setdefault(arch, {})[stage] = entry
    write_json(Path(root) / MANIFEST_FILE, manifest)
