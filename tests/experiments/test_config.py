import json

import numpy as np
import pytest

from experiments.config import TrainConfig, load_config_file, preset_names
from experiments.objective import objective


def test_unknown_keys_fail_and_name_the_valid_ones():
    with pytest.raises(KeyError, match="unknown config key.*learning_rate.*valid keys:.*lr"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_values_are_coerced_to_field_types():
    cfg = TrainConfig.from_dict({"lr": np.float64(0.01), "depth": np.int64(4), "epochs": 3.0, "train_on_val": "true"})
    assert type(cfg.lr) is float and type(cfg.depth) is int and cfg.epochs == 3 and cfg.train_on_val is True
    with pytest.raises(ValueError, match="whole number"):
        TrainConfig.from_dict({"epochs": 2.5})


def test_overlay_keeps_the_base():
    base = TrainConfig(arch="pretrained", lr=0.5)
    assert TrainConfig.from_dict({"dropout": 0.1}, base).lr == 0.5


@pytest.mark.parametrize("bad", [{"optimizer": "lion"}, {"schedule": "step"}, {"dropout": 1.0}, {"epochs": 0},
                                 {"aug_erase": 2.0}, {"group_balance": 1.5}, {"group_balance": -0.1}])
def test_invalid_values_are_rejected(bad):
    with pytest.raises(ValueError, match="valid|must"):
        TrainConfig.from_dict(bad)


def test_presets_are_the_study_recipes(tmp_path):
    assert {"seed_a", "seed_b"} <= set(preset_names())
    a = TrainConfig.from_dict(load_config_file("seed_a"))
    b = TrainConfig.from_dict(load_config_file("seed_b"))
    assert (a.arch, a.optimizer, a.lr, a.epochs, a.batch_size) == ("scratch", "adam", 1e-3, 100, 32)
    assert (b.arch, b.unfreeze_epoch, b.schedule, b.epochs) == ("pretrained", 5, "plateau", 90)
    a.save(tmp_path / "a.json")
    assert TrainConfig.from_dict(json.loads((tmp_path / "a.json").read_text())) == a
    with pytest.raises(FileNotFoundError, match="presets: .*seed_a"):
        load_config_file("nope")


def test_objective_is_one_at_the_study_baseline():
    assert objective(0.865, 6.25) == pytest.approx(1.0)
    assert objective(0.9325, 3.125) == pytest.approx(0.5)
