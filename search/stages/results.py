"""What a finished search leaves behind: trials.csv, best_config.json and the console summary table."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.config import TrainConfig
from experiments.objective import METRIC, MODE, SELECTION_EPOCHS, selection_score
from search.hpo.trial_layout import CHECKPOINT_FILE, PLACEMENT
from search.stages.manifest import relative

STATUS_COMPLETED, STATUS_STOPPED, STATUS_FAILED = "completed", "stopped_early", "failed"
STATUS_INTERRUPTED = "interrupted"  # the run was stopped (a signal, a full disk) while the trial ran or waited
FINISHED_IN_TUNE = ("TERMINATED", "ERROR")
TRIALS_FILE, BEST_CONFIG_FILE, PLAN_FILE = "trials.csv", "best_config.json", "search_plan.json"
LOCAL_COLUMNS = ("trial_path", "best_checkpoint")  # where a trial's files are: the manifest's, not trials.csv's
SCORE_COLUMN = f"score_{METRIC}"  # what trials are ranked by: experiments.objective.selection_score


def read_trials(path: Path) -> pd.DataFrame:
    """trials.csv as written; trial ids stay strings (an id such as ``906370e5`` would otherwise read as a float)."""
    return pd.read_csv(path, dtype={"trial_id": str})


def manifest_trials(root: Path, trials: pd.DataFrame) -> list[dict[str, Any]]:
    """The search's trials as the manifest lists them: id, status, epochs, folder and best checkpoint."""
    return [{"trial_id": str(row["trial_id"]), "status": row["status"], "reason": row["reason"],
             "epochs": int(row["epochs"]), "path": relative(root, row.get("trial_path")),
             "best_checkpoint": relative(root, row.get("best_checkpoint"))} for _, row in trials.iterrows()]


def error_reason(error: BaseException | str | None) -> str:
    """The original message of a trial's error, on one line."""
    text = str(error).strip()
    # Ray wraps the trial's exception; its last non-empty line is the original message
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def saved_statuses(experiment_dir: str | os.PathLike) -> dict[str, str]:
    """Trial id → its status in Tune's last snapshot of the experiment (TERMINATED, ERROR, RUNNING, PENDING,
    PAUSED): what a resume continues. Empty where the snapshot cannot be read (a URI, or none yet)."""
    from search.hpo.storage import snapshot_files  # imports Ray, which the report (a reader of trials) must not

    if "://" in str(experiment_dir):
        return {}
    state = next((p for p in snapshot_files(Path(experiment_dir)) if p.name.startswith("experiment_state-")), None)
    try:
        trials = json.loads(state.read_text())["trial_data"] if state is not None else []
    except (OSError, ValueError, KeyError):
        return {}
    return {t["trial_id"]: t["status"] for t in (json.loads(meta) for meta, _ in trials)}


def trial_rows(result_grid, base_config: dict[str, Any], max_epochs: int, interrupted: bool = False,
               budgeted: bool = True) -> pd.DataFrame:
    """One row per trial: its searched config, epochs run, how it ended, best and last metrics. In an
    ``interrupted`` search the trials that Tune's last snapshot has not finished are ``STATUS_INTERRUPTED``."""
    rows = []
    statuses = saved_statuses(result_grid.experiment_path) if interrupted else {}
    for result in result_grid:
        history = result.metrics_dataframe
        last = result.metrics or {}
        epochs = int(last.get("training_iteration", 0) or 0)
        trial_id = last.get("trial_id", Path(result.path).name)
        if result.error is not None:
            status, reason = STATUS_FAILED, error_reason(result.error)
        elif interrupted and statuses.get(trial_id) not in FINISHED_IN_TUNE:
            status, reason = STATUS_INTERRUPTED, f"interrupted after epoch {epochs}; --resume continues it"
        elif epochs == 0:  # created as the search's time budget ran out, never started
            status, reason = STATUS_STOPPED, ("never started: the search's time budget was spent" if budgeted
                                              else "never started")
        elif epochs < max_epochs:
            status, reason = STATUS_STOPPED, f"stopped by the scheduler after epoch {epochs}"
        else:
            status, reason = STATUS_COMPLETED, ""
        row: dict[str, Any] = {"trial_id": trial_id, "status": status, "reason": reason, "epochs": epochs}
        # where the trial ran last and what it was given (search.hpo.trainable.limit_resources)
        row.update({k: last.get(k) for k in PLACEMENT})
        if history is not None and "node_id" in history:
            row["nodes"] = len(set(history["node_id"].dropna()))
        if history is not None and "time_this_iter_s" in history:  # an epoch with its validation and checkpoint
            row["iter_seconds"] = float(history["time_this_iter_s"].mean())
        for part in ("epoch_seconds", "score_seconds"):  # its training and its scoring (the retraining's projection)
            if history is not None and part in history:
                row[part] = float(history[part].mean())
        row.update({f"config/{k}": v for k, v in sorted((result.config or {}).items())})
        scored = history.dropna(subset=[METRIC]) if history is not None and METRIC in history else None
        if scored is not None and len(scored):
            best = scored.loc[scored[METRIC].idxmin()]
            row.update({"best_epoch": int(best["training_iteration"]), f"best_{METRIC}": best[METRIC],
                        "best_val_gender_acc": best["val_gender_acc"], "best_val_age_mae": best["val_age_mae"]})
            row.update({f"last_{METRIC}": last.get(METRIC), "last_val_gender_acc": last.get("val_gender_acc"),
                        "last_val_age_mae": last.get("val_age_mae")})
            tail = scored.sort_values("training_iteration").tail(SELECTION_EPOCHS)
            row.update({SCORE_COLUMN: selection_score(tail[METRIC]), "score_val_gender_acc": tail["val_gender_acc"].mean(),
                        "score_val_age_mae": tail["val_age_mae"].mean()})
        row["trial_path"] = result.path
        try:
            best_checkpoint = result.get_best_checkpoint(METRIC, MODE) if scored is not None and len(scored) else None
        except RuntimeError:  # stopped (by the time budget) before its first checkpoint was written
            best_checkpoint = None
        row["best_checkpoint"] = (f"{best_checkpoint.path}/{CHECKPOINT_FILE}" if best_checkpoint is not None else None)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if SCORE_COLUMN in frame:
        frame = frame.sort_values(SCORE_COLUMN, na_position="last").reset_index(drop=True)
    return frame


def best_configs(trials: pd.DataFrame, base_config: dict[str, Any], k: int = 1) -> list[dict[str, Any]]:
    """The ``k`` best trials' full configs, by ``SCORE_COLUMN``. Trials that ran the whole budget rank first, so an
    early-stopped trial's short-budget score is never compared as if it were final."""
    if SCORE_COLUMN not in trials:
        return []
    ranked = trials[(trials["status"] != STATUS_FAILED) & trials[SCORE_COLUMN].notna()].copy()
    ranked["_full"] = (ranked["status"] == STATUS_COMPLETED).astype(int)
    ranked = ranked.sort_values(["_full", SCORE_COLUMN], ascending=[False, True]).head(k)
    out = []
    for _, row in ranked.iterrows():
        searched = {c.split("/", 1)[1]: _plain(row[c]) for c in trials.columns if c.startswith("config/")}
        config = TrainConfig.from_dict({**base_config, **searched}).to_dict()
        out.append({"trial_id": row["trial_id"], "status": row["status"], "epochs": int(row["epochs"]),
                    "best_epoch": int(row["best_epoch"]), METRIC: float(row[SCORE_COLUMN]),
                    "val_gender_acc": float(row["score_val_gender_acc"]), "val_age_mae": float(row["score_val_age_mae"]),
                    "searched": searched, "config": config})
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def write_trials(folder: Path, trials: pd.DataFrame) -> None:
    """trials.csv in ``folder``, written then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{TRIALS_FILE}.tmp"
    try:
        trials.drop(columns=list(LOCAL_COLUMNS), errors="ignore").to_csv(tmp, index=False)
        os.replace(tmp, folder / TRIALS_FILE)
    finally:
        tmp.unlink(missing_ok=True)


def write_outputs(folder: Path, trials: pd.DataFrame, base_config: dict[str, Any]) -> dict[str, Any] | None:
    """Write trials.csv and best_config.json into ``folder``; return the best entry (None if every trial failed)."""
    write_trials(folder, trials)
    best = best_configs(trials, base_config, k=1)
    if best:
        (folder / BEST_CONFIG_FILE).write_text(json.dumps(best[0], indent=2) + "\n")
    return best[0] if best else None


def summary_table(trials: pd.DataFrame, arch: str, top: int = 10) -> str:
    """A fixed-width table of the best trials, for the console."""
    counts = trials["status"].value_counts().to_dict()
    head = (f"{arch}: {len(trials)} trials — " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if SCORE_COLUMN not in trials:
        return head
    searched = [c for c in trials.columns if c.startswith("config/")]
    cols = ["trial_id", "status", "epochs", SCORE_COLUMN, "score_val_gender_acc", "score_val_age_mae"] + searched
    view = trials[cols].head(top).copy()
    view.columns = [c.replace("config/", "") for c in cols]
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        return head + "\n" + view.to_string(index=False)
