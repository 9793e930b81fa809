"""An experiment read back for the report, through its manifest only."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from search.hpo.study import open_storage
from search.stages import manifest
from search.stages.results import SCORE_COLUMN, read_trials


@dataclass
class ArchResults:
    arch: str
    trials: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    plan: dict[str, Any]
    study: optuna.Study | None
    summary: pd.DataFrame  # retrain_summary.csv (may be empty)
    runs: pd.DataFrame  # retrain_runs.csv (may be empty)
    best_model: dict[str, Any] | None
    ensemble: dict[str, Any] | None  # the retrained seeds of the top configuration, averaged
    ensemble_predictions: pd.DataFrame | None
    retrain_histories: dict[str, pd.DataFrame]
    predictions: dict[str, pd.DataFrame]
    missing: list[str]  # files the manifest lists that are not there

    @property
    def scored(self) -> pd.DataFrame:
        """The trials that reported at least one epoch (none when every trial failed at once)."""
        if SCORE_COLUMN not in self.trials:
            return self.trials.iloc[0:0]
        return self.trials.dropna(subset=[SCORE_COLUMN])


def _read_csv(path: Path | None) -> pd.DataFrame:
    return pd.read_csv(path) if path is not None and path.is_file() and path.stat().st_size > 1 else pd.DataFrame()


def _histories(root: Path, entries: list[dict[str, Any]], missing: list[str]) -> dict[str, pd.DataFrame]:
    """Each listed trial's per-epoch results (Tune's ``progress.csv`` in the trial folder the manifest names)."""
    out = {}
    for entry in entries:
        folder = manifest.locate(root, entry.get("path"))
        if folder is None or entry.get("trial_id") is None:
            continue
        if not folder.is_dir():
            missing.append(f"trial {entry['trial_id']}: its folder {folder} is missing (moved or deleted?)")
            continue
        progress = folder / "progress.csv"
        frame = _read_csv(progress)
        if len(frame):
            out[str(entry["trial_id"])] = frame
    return out


def load_arch(root: Path, arch: str) -> ArchResults | None:
    """An architecture's results, found through the experiment's manifest; None when it has no search."""
    entry = manifest.load(root)["archs"].get(arch, {})
    search = entry.get("search")
    if search is None:
        return None
    missing: list[str] = []
    trials_csv = manifest.locate(root, search["trials_csv"])
    if trials_csv is None or not trials_csv.is_file():
        raise manifest.ManifestError(f"{arch}: the search's {trials_csv} listed in the manifest is missing; run "
                                     f"the search stage again with --resume")
    study = None
    storage_file = manifest.locate(root, search.get("optuna_storage"))
    if storage_file is not None and storage_file.is_file():
        try:
            study = optuna.load_study(study_name=search["study_name"], storage=open_storage(storage_file))
        except KeyError:  # no study of that name: the search never sampled
            study = None
    plan_file = manifest.locate(root, search.get("plan"))
    plan = json.loads(plan_file.read_text()) if plan_file is not None and plan_file.is_file() else {}
    retrain = entry.get("retrain") or {}
    runs = retrain.get("runs", [])
    predictions = {}
    for run in runs:
        frame = _listed_csv(root, run.get("predictions"), f"retraining run {run['trial_id']}: its test predictions",
                            missing)
        if frame is not None:
            predictions[run["trial_id"]] = frame
    ensemble = retrain.get("ensemble")
    return ArchResults(arch, read_trials(trials_csv), _histories(root, search["trials"], missing), plan, study,
                       _read_csv(manifest.locate(root, retrain.get("summary"))),
                       _read_csv(manifest.locate(root, retrain.get("runs_csv"))), retrain.get("best_model"),
                       ensemble,
                       _listed_csv(root, ensemble.get("predictions"), "the ensemble's test predictions", missing)
                       if ensemble else None,
                       _histories(root, runs, missing), predictions, missing)


def _listed_csv(root: Path, listed: str | None, what: str, missing: list[str]) -> pd.DataFrame | None:
    """A CSV the manifest lists (None where it lists none); a listed file that is gone is noted in ``missing``."""
    path = manifest.locate(root, listed)
    if path is None:
        return None
    if not path.is_file():
        missing.append(f"{what} {path} are missing")
        return None
    return pd.read_csv(path)


def exported_source(r: ArchResults) -> tuple[str, pd.DataFrame] | None:
    """(what, test predictions) of the model ``search/serve/export.py`` exports by default: the ensemble, else the marked
    model."""
    if r.ensemble_predictions is not None:
        return f"the ensemble of its {len(r.ensemble['members'])} seeds", r.ensemble_predictions
    if r.best_model and r.best_model["trial_id"] in r.predictions:
        return "the marked model", r.predictions[r.best_model["trial_id"]]
    return None
