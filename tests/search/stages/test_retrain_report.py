"""Retraining with seeds, bootstrap intervals, and the comparison report of a finished tiny search."""
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, run_cli, run_main

from experiments.evaluation.metrics import bootstrap_ci
from search.report.sections import SECTIONS, asha_rungs, pareto_front

ARCHS = ("scratch", "pretrained")


def test_pareto_front_and_rungs():
    acc = np.array([0.9, 0.8, 0.85, 0.7])
    mae = np.array([7.0, 5.0, 8.0, 9.0])
    assert pareto_front(acc, mae).tolist() == [1, 0]  # 0.85@8 and 0.7@9 are beaten by 0.9@7
    assert asha_rungs({"grace_period": 5, "reduction_factor": 3, "max_epochs": 100}) == [5, 15, 45]


@pytest.mark.parametrize("arch", ARCHS)
def test_retrained_top_configs_with_seeds(tiny_search, arch):
    folder, _ = tiny_search
    trials = pd.read_csv(folder / arch / "trials.csv")
    runs = pd.read_csv(folder / f"{arch}-retrain" / "retrain_runs.csv")
    summary = pd.read_csv(folder / f"{arch}-retrain" / "retrain_summary.csv")
    # smoke preset: top 2 configurations × 2 seeds, trained for the full 3-epoch budget
    assert len(runs) == 4 and (runs["status"] == "completed").all() and (runs["epochs"] == 3).all()
    assert sorted(runs["seed"].unique()) == [0, 1]
    # trials that ran the whole budget rank first, then early-stopped ones, each by their last epochs' validation objective
    ranked = trials[trials["status"] != "failed"].assign(full=trials["status"] == "completed")
    ranked = ranked.sort_values(["full", "score_objective"], ascending=[False, True])
    assert summary["search_trial_id"].astype(str).tolist() == ranked["trial_id"].astype(str).head(2).tolist()
    for _, row in summary.iterrows():
        mine = runs[runs["rank"] == row["rank"]]
        assert row["test_gender_acc_mean"] == pytest.approx(mine["test_gender_acc"].mean(), abs=1e-6)
        assert row["test_age_mae_mean"] == pytest.approx(mine["test_age_mae"].mean(), rel=1e-5)
        assert row["test_gender_acc_ci_low"] <= row["test_gender_acc_mean"] <= row["test_gender_acc_ci_high"]
        assert row["n_test"] == 45
    listed = {r["trial_id"]: r for r in json.loads((folder / "manifest.json").read_text())["archs"][arch]["retrain"]["runs"]}
    assert set(listed) == set(runs["trial_id"])
    for _, run in runs.iterrows():  # the reported final metrics are those of the saved test predictions
        preds = pd.read_csv(folder / listed[run["trial_id"]]["predictions"])
        accuracy = ((preds["p_female"] >= 0.5).astype(int) == preds["gender"]).mean()
        assert accuracy == pytest.approx(run["test_gender_acc"], abs=1e-6)
        assert (preds["pred_age"] - preds["age"]).abs().mean() == pytest.approx(run["test_age_mae"], rel=1e-5)
        # ... which come from the model after the last epoch, whatever checkpoint Ray kept
        ckpt = torch.load(folder / listed[run["trial_id"]]["checkpoint"], weights_only=True)
        assert ckpt["epoch"] == 3 and ckpt["config"]["train_on_val"]
    best = json.loads((folder / f"{arch}-retrain" / "best_model.json").read_text())
    top = runs[runs["rank"] == 0]
    assert best["rank"] == 0 and best["trial_id"] == top.loc[top["final_train_loss"].idxmin(), "trial_id"]
    split = json.loads((folder / "split.json").read_text())
    assert len(split["test"]) == 45 and not set(split["test"]) & set(split["train"] + split["val"])


def test_report_has_every_section_and_matches_the_results(tiny_search):
    folder, result = tiny_search
    report = folder / "report"
    md, page = (report / "report.md").read_text(), (report / "report.html").read_text()
    for section in SECTIONS:
        assert f"## {section}" in md and section in page
    for png in ("curves_scratch.png", "curves_pretrained.png", "trials_objective.png", "pareto.png",
                "params_scratch.png", "worst_pretrained.png"):
        assert (report / png).stat().st_size > 1000, png
        assert f"]({png})" in md
    assert not re.search(r'src="(?!data:)', page), "the HTML page must embed its images"
    assert page.count("data:image/png;base64,") == md.count("![")
    for arch, label in (("scratch", "Model A (scratch CNN)"), ("pretrained", "Model B (pretrained MobileNetV2)")):
        top = pd.read_csv(folder / f"{arch}-retrain" / "retrain_summary.csv").query("rank == 0").iloc[0]
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        assert f"{top['test_gender_acc_mean'] * 100:.1f} ± {top['test_gender_acc_std'] * 100:.1f}" in row
        assert f"{top['test_age_mae_mean']:.2f} ± {top['test_age_mae_std']:.2f}" in row
        # the ensemble's row: its accuracy and the bootstrap interval of its own test predictions
        ensemble = json.loads((folder / "manifest.json").read_text())["archs"][arch]["retrain"]["ensemble"]
        preds = pd.read_csv(folder / ensemble["predictions"])
        correct = ((preds["p_female"] >= 0.5).astype(int) == preds["gender"]).to_numpy(float)
        low, high = bootstrap_ci(correct[None])
        assert ensemble["test_gender_acc_ci"] == pytest.approx([low, high]) and low <= correct.mean() <= high
        row = next(line for line in md.splitlines() if line.startswith(f"| {label}: ensemble of its 2 seeds |"))
        assert f"| {correct.mean() * 100:.1f} | {low:.1%} – {high:.1%} |" in row
    assert "| study: Model A (validation, reported) | 86–87% |" in md
    # what ran and on which split, read from the experiment's own records, not from the settings' upper bounds
    ran = "; ".join(f"{arch} " + ", ".join(str(s) for s in sorted(runs["seed"].unique()))
                    + " (" + ", ".join(str(e) for e in sorted(runs["epochs"].unique())) + " epochs)"
                    for arch in ("scratch", "pretrained")
                    for runs in [pd.read_csv(folder / f"{arch}-retrain" / "retrain_runs.csv")])
    assert f"| retraining seeds | {ran} |" in md
    split = json.loads((folder / "split.json").read_text())
    counts = "/".join(str(split["counts"][part]) for part in ("train", "val", "test"))
    assert f"| split | {counts} images (70%/15%/15%), stratified by gender × age band, seed {split['seed']} " in md
    assert "search/run.py" in md and "--stage report" in md
    assert "report:" in result.stdout


def test_report_and_retrain_stages_on_an_existing_experiment(tiny_search, tmp_path):
    folder, _ = tiny_search
    copy = tmp_path / "tiny"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "report")
    result = run_cli("--name", "tiny", "--storage-path", tmp_path, "--stage", "report", "--arch", "both", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (copy / "report" / "report.html").is_file()
    # retraining again finds its finished trials and re-runs none of them
    def runs():
        frame = pd.read_csv(copy / "scratch-retrain" / "retrain_runs.csv").drop(columns=["checkpoint"])
        return frame.sort_values(["rank", "seed"]).reset_index(drop=True)

    before = runs()
    result = run_cli("--name", "tiny", "--storage-path", tmp_path, "--stage", "retrain", "--arch", "scratch", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming retraining" in result.stdout
    pd.testing.assert_frame_equal(runs(), before)


def test_later_stage_without_an_experiment_is_refused(tmp_path, data_dir, capsys):
    code, err = run_main(capsys, "--data", data_dir, "--name", "none", "--storage-path", tmp_path, "--stage", "report",
                         *TINY)
    assert code == 2 and "run the search stage first" in err
    assert not (tmp_path / "none").exists()
