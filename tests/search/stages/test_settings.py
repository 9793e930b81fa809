"""One resolved run: preset → saved experiment → flags → --set merged once; resume restores it; bad input is one line."""
import json
import shlex

import pytest
from conftest import run_cli, run_main

from search.run import get_args_parser
from search.stages.settings import SETTINGS_FILE, UsageError, record_resume, resolve, save_new


def settings(line: str, data_dir, storage):
    args = get_args_parser().parse_args(shlex.split(f"--data {data_dir} --storage-path {storage} {line}"))
    return resolve(args)


def test_set_of_a_flag_owned_field_flows_everywhere(data_dir, tmp_path):
    s = settings("--preset smoke --set image_size=64 max_images=100 seed=4 epochs=3", data_dir, tmp_path)
    assert (s.image_size, s.max_images, s.seed, s.max_epochs) == (64, 100, 4, 3)
    for arch in ("scratch", "pretrained"):
        base = s.base_config(arch)
        assert (base["image_size"], base["max_images"], base["seed"], base["epochs"]) == (64, 100, 4, 3)
    assert s.overrides == {}  # nothing left for a second place to read


def test_set_and_its_flag_must_agree(data_dir, tmp_path):
    with pytest.raises(UsageError, match="--set image_size=64 contradicts --image-size 48"):
        settings("--image-size 48 --set image_size=64", data_dir, tmp_path)
    with pytest.raises(UsageError, match="--set arch: choose architectures with --arch"):
        settings("--set arch=pretrained", data_dir, tmp_path)


@pytest.mark.parametrize("line, message", [
    ("--set lr=", "--set lr=: no value after '='"),
    ("--set lr=abc", "config key lr needs a number, got 'abc'"),
    ("--set lr", "--set takes KEY=VALUE"),
    ('--set optimizer={"a"', "not valid JSON"),
    ("--image-size 8", "--image-size 8: image_size must be between 16 and 512"),
    ("--image-size 100000", "--image-size 100000: image_size must be between 16 and 512"),
    ("--image-size 0", "--image-size 0: image_size must be between 16 and 512"),
    ("--set image_size=8", "--set image_size 8: image_size must be between 16 and 512"),
    ("--max-images -3", "--max-images -3: must be 0"),
])
def test_bad_values_name_their_source(line, message, data_dir, tmp_path):
    with pytest.raises(UsageError) as err:
        settings(line, data_dir, tmp_path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_resume_restores_every_setting(data_dir, tmp_path):
    first = settings("--preset smoke --name exp --arch scratch --seed 5 --scheduler fifo --concurrency 1 "
                     f"--cache-dir {tmp_path / 'cache'} --num-samples 3 --set dropout=0.2 image_size=40",
                     data_dir, tmp_path)
    first.root.mkdir(parents=True)
    save_new(first)
    # only the name (and where experiments live): the data folder comes back too
    args = get_args_parser().parse_args(["--name", "exp", "--storage-path", str(tmp_path), "--resume"])
    again = resolve(args)
    skip = {"command"}
    assert {k: v for k, v in again.to_json().items() if k not in skip} == \
        {k: v for k, v in first.to_json().items() if k not in skip}
    assert again.archs == ("scratch",) and again.seed == 5 and again.overrides == {"dropout": 0.2}


@pytest.mark.parametrize("line, message", [
    ("--seed 1", "--seed 1 contradicts the saved experiment 'exp' (seed 5)"),
    ("--preset full", "--preset full contradicts the saved experiment 'exp' (preset smoke)"),
    ("--set dropout=0.3", "--set dropout=0.3 contradicts the saved experiment 'exp'"),
    ("--set image_size=64", "--set image_size 64 contradicts the saved experiment 'exp' (image_size 40)"),
    ("--arch pretrained", "experiment 'exp' has no pretrained search"),
])
def test_resume_refuses_a_contradicting_flag(line, message, data_dir, tmp_path):
    first = settings("--preset smoke --name exp --arch scratch --seed 5 --set dropout=0.2 image_size=40", data_dir,
                     tmp_path)
    first.root.mkdir(parents=True)
    save_new(first)
    with pytest.raises(UsageError) as err:
        settings(f"--name exp --resume {line}", data_dir, tmp_path)
    assert message in str(err.value)


def test_resume_records_what_may_change(data_dir, tmp_path):
    first = settings("--preset smoke --name exp --seed 5", data_dir, tmp_path)
    first.root.mkdir(parents=True)
    save_new(first)
    again = settings("--name exp --resume --seed 5 --concurrency 1 --cpus-per-trial 2 --max-failures 0", data_dir,
                     tmp_path)
    assert (again.concurrency, again.cpus_per_trial, again.max_failures) == (1, 2.0, 0)
    record_resume(again, "search")
    saved = json.loads((first.root / SETTINGS_FILE).read_text())
    assert saved["settings"]["concurrency"] is None  # the experiment's own values stay as they were
    assert saved["resumes"][-1]["changed"] == {"cpus_per_trial": 2.0, "concurrency": 1, "max_failures": 0}


# --------------------------------------------------------------------------------------------------------------
# the command line: one line, exit 2, nothing written


@pytest.mark.parametrize("extra, message", [
    (["--resume", "--name", "does-not-exist"], "no experiment 'does-not-exist'"),
    (["--image-size", "8"], "--image-size 8: image_size must be between 16 and 512"),
    (["--image-size", "100000"], "--image-size 100000: image_size must be between 16 and 512"),
    (["--image-size", "0"], "--image-size 0: image_size must be between 16 and 512"),
    (["--set", "lr="], "--set lr=: no value after '='"),
    (["--storage-path", "/proc/facetune-runs"], "cannot write the experiment to /proc/facetune-runs"),
])
def test_cli_refuses_in_one_line_and_writes_nothing(extra, message, data_dir, tmp_path, capsys):
    storage = tmp_path / "runs"
    code, err = run_main(capsys, "--data", data_dir, "--storage-path", storage, "--preset", "smoke", "--name", "x",
                         *extra)
    assert code == 2, err[-2000:]
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (storage / "x").exists() and not (storage / "does-not-exist").exists()


def test_a_subset_too_small_to_split_is_refused_in_one_line_from_a_new_process(data_dir, tmp_path):
    storage = tmp_path / "runs"
    result = run_cli("--data", data_dir, "--storage-path", storage, "--preset", "smoke", "--name", "x",
                     "--max-images", "5", timeout=180)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "max_images 5 leaves 5 usable image(s)" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (storage / "x").exists()


def test_storage_under_a_file_is_refused(data_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_main(capsys, "--data", data_dir, "--storage-path", tmp_path / "file" / "runs", "--preset", "smoke")
    assert code == 2 and "cannot write the experiment to" in err


def test_the_default_preset_follows_the_hardware_and_the_budget(data_dir, tmp_path):
    import torch

    assert settings("--budget 30m", data_dir, tmp_path).preset == "quick"
    assert settings("--budget 30m", data_dir, tmp_path).budget_s == 1800
    assert settings("", data_dir, tmp_path).preset == ("full" if torch.cuda.is_available() else "quick")
    assert settings("--budget none", data_dir, tmp_path).budget_s is None
    assert settings("--preset full --budget 10m", data_dir, tmp_path).budget_s == 600


def test_a_preset_schedules_each_architecture_and_the_flags_replace_it(data_dir, tmp_path):
    s = settings("--preset quick", data_dir, tmp_path)
    assert (s.epochs_for("scratch"), s.grace_for("scratch")) == (24, 6)  # the scratch CNN's own schedule
    assert (s.epochs_for("pretrained"), s.grace_for("pretrained")) == (s.max_epochs, s.grace_period) == (8, 3)
    assert s.base_config("scratch")["epochs"] == 24 and s.base_config("pretrained")["epochs"] == 8
    assert (s.base_config("scratch")["image_size"], s.base_config("pretrained")["image_size"]) == (48, 64)
    flagged = settings("--preset quick --max-epochs 10 --image-size 56", data_dir, tmp_path)
    assert (flagged.epochs_for("scratch"), flagged.grace_for("scratch")) == (10, 6)
    assert flagged.epochs_for("pretrained") == 10
    assert flagged.base_config("scratch")["image_size"] == flagged.base_config("pretrained")["image_size"] == 56
    assert settings("--preset quick --set image_size=56", data_dir, tmp_path).image_size_for("scratch") == 56
    with pytest.raises(UsageError, match="scratch's schedule"):
        settings("--preset quick --max-epochs 4", data_dir, tmp_path)  # the scratch grace 6 > 4 epochs


def test_each_architecture_trains_on_faces_of_its_own_size_with_one_split(data_dir, tmp_path):
    from conftest import copy_real

    from data_utils.dataset import SPLIT_FILE
    from search.stages.pipeline import load_data, prepare_trial_data

    names = sorted(p.name for p in data_dir.iterdir() if p.name.endswith(".jpg.chip.jpg"))[:120]
    copy_real(data_dir, tmp_path / "faces", names)
    s = settings("--preset quick --arch both", tmp_path / "faces", tmp_path / "runs")
    faces, split, new = load_data(s, searching=True, resume=False)
    assert new and faces.images.shape[-1] == s.image_size_for(s.archs[0])
    s.root.mkdir(parents=True)
    split.save(s.root / SPLIT_FILE, faces)
    for arch in s.archs:
        data = prepare_trial_data(s, arch, faces, split)
        size = s.image_size_for(arch)
        assert list(data.faces) == [size] and data.faces[size].images.shape[-2:] == (size, size)
        for part in ("train", "val", "test"):  # the same faces in each part, whatever their size
            rows = getattr(data.split, part)
            assert [data.faces[size].names[i] for i in rows] == [faces.names[i] for i in getattr(split, part)]
    assert {s.image_size_for(a) for a in s.archs} == {48, 64}
