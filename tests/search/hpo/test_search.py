"""Whole searches on real images: ASHA stops trials and Optuna records them as pruned; TensorBoard; outputs."""
import json

import optuna
import pandas as pd
import pytest
import torch
from conftest import TINY, run_cli, run_main

from search.stages.results import read_trials


@pytest.mark.parametrize("arch", ["scratch", "pretrained"])
def test_asha_stops_trials_and_optuna_records_them_pruned(tiny_search, arch):
    folder, _ = tiny_search
    trials = pd.read_csv(folder / arch / "trials.csv")
    assert len(trials) == 5
    stopped = trials[trials["status"] == "stopped_early"]
    assert len(stopped) >= 1 and (stopped["epochs"] < 3).all()
    assert (trials[trials["status"] == "completed"]["epochs"] == 3).all()
    study = optuna.load_study(study_name=f"tiny-{arch}", storage=f"sqlite:///{folder / arch / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(stopped)
    assert states.count(optuna.trial.TrialState.COMPLETE) == (trials["status"] == "completed").sum()
    for t in study.trials:
        if t.state == optuna.trial.TrialState.PRUNED:
            # a pruned trial keeps the value it had when it was stopped, at the epoch it was stopped
            last_step = max(t.intermediate_values)
            assert t.value == pytest.approx(t.intermediate_values[last_step])
            assert last_step in set(stopped["epochs"])


def test_outputs_and_tensorboard(tiny_search):
    folder, result = tiny_search
    assert f"tensorboard --logdir {folder}" in result.stdout
    # every TensorBoard hint names the experiment, where the events are, never Ray's staging folder
    hints = [line for line in (result.stdout + result.stderr).splitlines() if "tensorboard --logdir" in line]
    assert hints and all(f"--logdir {folder}" in line for line in hints), hints
    for arch in ("scratch", "pretrained"):
        best = json.loads((folder / arch / "best_config.json").read_text())
        trials = pd.read_csv(folder / arch / "trials.csv")
        top = trials[trials["status"] == "completed"].sort_values("score_objective").iloc[0]
        assert best["trial_id"] == top["trial_id"] and best["objective"] == pytest.approx(top["score_objective"])
        assert best["config"]["arch"] == arch and best["config"]["epochs"] == 3
        assert {"config/lr", "config/dropout", "best_val_gender_acc", "last_val_age_mae", "reason"} <= set(trials)
        events = list((folder / arch).glob("train_trial_*/events.out.tfevents.*"))
        assert len(events) == 5
    assert "unfreeze_epoch" in pd.read_csv(folder / "pretrained" / "trials.csv").columns.str.replace("config/", "").tolist()


def test_the_study_recipe_the_found_configuration_and_the_defaults_are_trials_of_every_search(tiny_search):
    from experiments.config import TrainConfig, load_config_file
    from search.hpo.spaces import FOUND, RECIPES, point_in_space
    from search.stages.settings import RunSettings

    folder, _ = tiny_search
    settings = RunSettings(**json.loads((folder / "search_settings.json").read_text())["settings"])
    for arch in ("scratch", "pretrained"):
        trials = pd.read_csv(folder / arch / "trials.csv")
        found = load_config_file(FOUND[arch])  # each architecture has one (spaces.FOUND)
        for values in (load_config_file(RECIPES[arch]), found, TrainConfig(arch=arch).to_dict()):
            point = point_in_space(values, settings.space(arch))
            matches = [all(row[f"config/{k}"] == pytest.approx(v) for k, v in point.items())
                       for _, row in trials.iterrows()]
            assert sum(matches) == 1, (arch, point)
    # --set max_images=300 reached the split, and --set image_size=32 the trials and the saved settings
    assert json.loads((folder / "split.json").read_text())["counts"]["test"] == 45
    saved = json.loads((folder / "search_settings.json").read_text())["settings"]
    assert (saved["image_size"], saved["max_images"], saved["overrides"]) == (32, 300, {"batch_size": 32})
    manifest = json.loads((folder / "manifest.json").read_text())
    for arch in ("scratch", "pretrained"):
        search = manifest["archs"][arch]["search"]
        assert search["study_name"] == f"tiny-{arch}" and (folder / search["optuna_storage"]).is_file()
        assert [t["trial_id"] for t in search["trials"]] == read_trials(folder / arch / "trials.csv")["trial_id"].tolist()
        for t in search["trials"]:
            ckpt = torch.load(folder / t["best_checkpoint"], weights_only=True)
            assert ckpt["config"]["image_size"] == 32 and ckpt["config"]["max_images"] == 300


def test_rerun_without_resume_refuses(tiny_search, data_dir):
    folder, _ = tiny_search
    result = run_cli("--arch", "scratch", "--data", data_dir, "--storage-path", folder.parent, "--name", "tiny", *TINY)
    assert result.returncode == 2 and "already exists; pass --resume" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--arch", "resnet"], "invalid choice: 'resnet'"),
    (["--data", "/nonexistent/faces"], "does not exist"),
    (["--num-samples", "0"], "--num-samples 0: must be at least 1"),
    (["--grace-period", "9", "--max-epochs", "3"], "--grace-period 9: must be between 1 and --max-epochs 3"),
    (["--set", "learning_rate=1"], "unknown config key"),
])
def test_bad_input_is_one_clear_line(args, message, data_dir, tmp_path, capsys):
    code, err = run_main(capsys, "--data", data_dir, "--storage-path", tmp_path, "--name", "refused", *TINY, *args)
    assert code == 2, err[-2000:]
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "refused").exists(), "a refused run must leave no half-made experiment"


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--gpus-per-trial", "1"], "the Ray cluster has no GPUs"),
    (["--address", "127.0.0.1:9"], "cannot reach a Ray cluster at 127.0.0.1:9"),
    (["--address", "nonsense"], "is not auto, host:port or ray://host:port"),
])
def test_resources_that_are_not_there_are_one_clear_line(args, message, data_dir, tmp_path):
    result = run_cli("--data", data_dir, "--storage-path", tmp_path, "--name", "refused", *TINY, *args, timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "refused").exists(), "a refused run must leave no half-made experiment"


def test_empty_data_folder_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_main(capsys, "--data", tmp_path / "empty", "--storage-path", tmp_path, *TINY)
    assert code == 2 and "the data folder is empty" in err
