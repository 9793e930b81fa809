"""Retrain a search's top configurations with several seeds on train+validation, and score them on the test split.

Each (configuration, seed) pair is a Ray Tune trial of a second experiment, ``<name>/<arch>-retrain``, with
the search's resources, so a retraining run is resumable like a search. No choice here looks at the test
split: every model trains for its configuration's full epoch budget, and the model marked best is the
search's first-ranked configuration (ranked on validation) with the seed whose final training loss is lowest.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from data_utils.dataset import Faces
from experiments.device import resolve_precision
from experiments.evaluation.calibration import SPREAD
from experiments.evaluation.metrics import bootstrap_ci, per_face
from experiments.objective import METRIC, objective
from experiments.train import load_model, predict
from search.hpo.trial_layout import CHECKPOINT_FILE
from search.stages import manifest
from search.stages.results import STATUS_COMPLETED, STATUS_FAILED, error_reason

RUNS_FILE, SUMMARY_FILE, BEST_MODEL_FILE, PREDICTIONS_DIR, ENSEMBLE_PREDICTIONS = (
    "retrain_runs.csv", "retrain_summary.csv", "best_model.json", "test_predictions", "ensemble.csv")


def summarize(runs: pd.DataFrame, predictions: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per configuration: mean ± std over seeds and a 95% bootstrap interval of test accuracy and MAE."""
    rows = []
    for rank, group in runs.groupby("rank"):
        preds = [predictions[t] for t in group["trial_id"]]
        correct, abs_err = (np.stack(parts) for parts in zip(*(per_face(p) for p in preds)))
        acc, mae = correct.mean(axis=1), abs_err.mean(axis=1)
        acc_ci, mae_ci = bootstrap_ci(correct), bootstrap_ci(abs_err)
        rows.append({
            "rank": int(rank), "seeds": len(group),
            "test_gender_acc_mean": acc.mean(), "test_gender_acc_std": acc.std(ddof=1) if len(acc) > 1 else 0.0,
            "test_gender_acc_ci_low": acc_ci[0], "test_gender_acc_ci_high": acc_ci[1],
            "test_age_mae_mean": mae.mean(), "test_age_mae_std": mae.std(ddof=1) if len(mae) > 1 else 0.0,
            "test_age_mae_ci_low": mae_ci[0], "test_age_mae_ci_high": mae_ci[1],
            f"test_{METRIC}_mean": float(np.mean([objective(a, m) for a, m in zip(acc, mae)])),
            "epoch_seconds_mean": float(group["epoch_seconds_mean"].mean()),
            "n_test": correct.shape[1],
        })
    return pd.DataFrame(rows)


def final_predictions(checkpoint_file: Path, epochs: int, test: Faces) -> pd.DataFrame:
    """Test predictions of the model a retraining run ended with, read from its final checkpoint.

    The checkpoint must be the one written after the last epoch: which checkpoint Ray kept is checked, not assumed.
    """
    ckpt = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    if int(ckpt["epoch"]) != epochs:
        raise RuntimeError(f"the kept checkpoint is from epoch {ckpt['epoch']}, not the final epoch {epochs}")
    model, cfg = load_model(ckpt, "cpu")
    # scored in the precision the run trained in, as the device here computes it
    age, prob, spread = predict(model, test.images, with_spread=True, precision=resolve_precision(
        cfg.precision, torch.device("cpu"), cfg.channels_last, cfg.arch, cfg.image_size))
    return pd.DataFrame({"name": test.names, "age": test.ages.numpy(), "gender": test.genders.numpy(),
                         "pred_age": age.numpy(), "p_female": prob.numpy(), SPREAD: spread.numpy()})


def collect(grid, configs: list[dict[str, Any]], test: Faces) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per retraining run (config rank, seed, test metrics of its final model, checkpoint) and its test
    predictions; the run's test metrics are computed from those predictions, so the two always agree."""
    rows, predictions = [], {}
    for result in grid:
        rank, seed = result.config["rank"], result.config["seed"]
        failed = {"rank": rank, "seed": seed, "status": STATUS_FAILED, "trial_path": result.path}
        if result.error is not None or result.checkpoint is None or not result.metrics:
            rows.append({**failed, "reason": error_reason(result.error) or "no checkpoint was reported"})
            continue
        trial_id = result.metrics["trial_id"]
        try:
            with result.checkpoint.as_directory() as folder:
                frame = final_predictions(Path(folder) / CHECKPOINT_FILE, configs[rank]["epochs"], test)
        except (RuntimeError, OSError, KeyError) as err:
            rows.append({**failed, "trial_id": trial_id, "reason": error_reason(err)})
            continue
        predictions[trial_id] = frame
        acc, mae = (float(v.mean()) for v in per_face(frame))
        history = result.metrics_dataframe
        rows.append({
            "rank": rank, "seed": seed, "status": STATUS_COMPLETED, "trial_id": trial_id,
            "epochs": int(result.metrics["training_iteration"]),
            "test_gender_acc": acc, "test_age_mae": mae, METRIC: objective(acc, mae),
            "final_train_loss": result.metrics["train_loss"],
            "epoch_seconds_mean": float(history["epoch_seconds"].mean()),
            "checkpoint": f"{result.checkpoint.path}/{CHECKPOINT_FILE}",
            "trial_path": result.path,
        })
    return pd.DataFrame(rows), predictions


def top_rank_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The completed runs of the best-ranked configuration that has any, by seed (empty when none completed)."""
    done = runs[runs["status"] == STATUS_COMPLETED] if len(runs) else runs
    if done.empty:
        return done
    return done[done["rank"] == done["rank"].min()].sort_values("seed")


def mark_best(runs: pd.DataFrame) -> pd.Series | None:
    """The model to export: the search's top configuration, its seed with the lowest final training loss."""
    top = top_rank_runs(runs)
    return None if top.empty else top.loc[top["final_train_loss"].idxmin()]


def ensemble_predictions(runs: pd.DataFrame, predictions: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(members, test predictions) of the ensemble: every completed seed of the best-ranked configuration, their
    ages and P(female) averaged per face (``models.Ensemble`` computes the same in one graph). None below 2 seeds."""
    members = top_rank_runs(runs)
    if len(members) < 2:
        return None
    frames = [predictions[t] for t in members["trial_id"]]
    mean = frames[0][["name", "age", "gender"]].copy()
    mean["pred_age"] = np.mean([f["pred_age"].to_numpy() for f in frames], axis=0)
    mean["p_female"] = np.mean([f["p_female"].to_numpy() for f in frames], axis=0)
    if all(SPREAD in f for f in frames):
        mean[SPREAD] = np.mean([f[SPREAD].to_numpy() for f in frames], axis=0)
    return members, mean


def write_retrain_outputs(root: Path, arch: str, experiment_dir: str, configs: list[dict[str, Any]],
                          searched: list[dict[str, Any]], runs: pd.DataFrame,
                          predictions: dict[str, pd.DataFrame]) -> dict[str, Any] | None:
    """retrain_runs.csv, retrain_summary.csv, predictions per run and best_model.json (the marked model) in
    ``<root>/<arch>-retrain``, and the retraining's entry in the manifest; returns the marked model's entry."""
    folder = root / f"{arch}-retrain"
    folder.mkdir(parents=True, exist_ok=True)
    runs.drop(columns=["trial_path"], errors="ignore").to_csv(folder / RUNS_FILE, index=False)
    pred_dir = folder / PREDICTIONS_DIR
    pred_dir.mkdir(exist_ok=True)
    for trial_id, frame in predictions.items():
        frame.to_csv(pred_dir / f"{trial_id}.csv", index=False)
    done = runs[runs["status"] == STATUS_COMPLETED] if len(runs) else runs
    summary = summarize(done, predictions) if predictions else pd.DataFrame()
    if not summary.empty:
        summary["search_trial_id"] = [searched[r]["trial_id"] for r in summary["rank"]]
        summary["search_val_objective"] = [searched[r][METRIC] for r in summary["rank"]]
    summary.to_csv(folder / SUMMARY_FILE, index=False)
    entry = best_model_entry(root, runs, configs)
    if entry is not None:
        (folder / BEST_MODEL_FILE).write_text(json.dumps(entry, indent=2) + "\n")
    manifest.record(root, arch, "retrain", {
        "experiment": manifest.relative(root, experiment_dir), "runs": run_entries(root, runs, predictions, pred_dir),
        "runs_csv": manifest.relative(root, folder / RUNS_FILE), "summary": manifest.relative(root, folder / SUMMARY_FILE),
        "best_model": entry, "ensemble": ensemble_entry(root, runs, predictions, configs, pred_dir)})
    return entry


def best_model_entry(root: Path, runs: pd.DataFrame, configs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The marked model's manifest entry (``mark_best``), None when no run completed."""
    best = mark_best(runs) if len(runs) else None
    if best is None:
        return None
    return {"rank": int(best["rank"]), "seed": int(best["seed"]), "trial_id": best["trial_id"],
            "checkpoint": manifest.relative(root, best["checkpoint"]), "config": configs[int(best["rank"])],
            "test_gender_acc": float(best["test_gender_acc"]), "test_age_mae": float(best["test_age_mae"]),
            METRIC: float(best[METRIC]),
            "selection": "search rank 1 (validation); seed with lowest final train loss"}


def ensemble_entry(root: Path, runs: pd.DataFrame, predictions: dict[str, pd.DataFrame],
                   configs: list[dict[str, Any]], pred_dir: Path) -> dict[str, Any] | None:
    """The ensemble's manifest entry, its averaged test predictions written beside the runs'; None below 2 seeds."""
    averaged = ensemble_predictions(runs, predictions) if predictions else None
    if averaged is None:
        return None
    members, frame = averaged
    frame.to_csv(pred_dir / ENSEMBLE_PREDICTIONS, index=False)
    correct, abs_err = per_face(frame)
    acc, mae = float(correct.mean()), float(abs_err.mean())
    rank = int(members["rank"].iloc[0])
    return {"rank": rank, "config": configs[rank],
            "members": [{"seed": int(m["seed"]), "trial_id": m["trial_id"],
                         "checkpoint": manifest.relative(root, m["checkpoint"])} for _, m in members.iterrows()],
            "test_gender_acc": acc, "test_age_mae": mae, METRIC: objective(acc, mae), "n_test": len(frame),
            # the same 95% bootstrap over test images as each configuration's seeds (summarize)
            "test_gender_acc_ci": list(bootstrap_ci(correct)), "test_age_mae_ci": list(bootstrap_ci(abs_err)),
            "predictions": manifest.relative(root, pred_dir / ENSEMBLE_PREDICTIONS),
            "selection": f"every seed of search rank {rank + 1}, predictions averaged"}


def run_entries(root: Path, runs: pd.DataFrame, predictions: dict[str, pd.DataFrame],
                pred_dir: Path) -> list[dict[str, Any]]:
    """One manifest entry per retraining run: its status, folder, final checkpoint and test predictions."""
    entries = []
    for _, run in runs.iterrows():
        trial_id = run.get("trial_id") if isinstance(run.get("trial_id"), str) else None
        entries.append({
            "rank": int(run["rank"]), "seed": int(run["seed"]), "trial_id": trial_id, "status": run["status"],
            "reason": run.get("reason") if isinstance(run.get("reason"), str) else "",
            "path": manifest.relative(root, run.get("trial_path")),
            "checkpoint": manifest.relative(root, run["checkpoint"]) if run["status"] == STATUS_COMPLETED else None,
            "predictions": (manifest.relative(root, pred_dir / f"{trial_id}.csv")
                            if trial_id in predictions else None)})
    return entries
