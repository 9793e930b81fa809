import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from data_utils.dataset import make_split
from data_utils.scan import race_group
from experiments.config import TrainConfig
from experiments.train import (
    NonFiniteLossError,
    TensorData,
    Trainer,
    fit_parts,
    load_model,
    mixup_draw,
    prepare_data,
    score,
)

SMALL = {"image_size": 32, "max_images": 2000, "batch_size": 32, "depth": 3, "base_width": 16, "dense_units": 64,
         "dropout": 0.1, "lr": 0.003, "warmup_epochs": 0, "age_loss_weight": 0.5, "epochs": 3, "device": "cpu"}


@pytest.fixture(scope="module")
def small(data_dir):
    cfg = TrainConfig.from_dict({**SMALL, "data_dir": str(data_dir)})
    faces, split = prepare_data(cfg)
    return cfg, faces, split


@pytest.fixture(scope="module")
def few(small):
    """The same faces split down to 300: for tests of what training does, not of how well it learns."""
    cfg, faces, _ = small
    cfg = TrainConfig.from_dict({"max_images": 300}, cfg)
    return cfg, faces, make_split(faces, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.max_images)


def test_three_epochs_beat_the_constant_predictor(small):
    cfg, faces, split = small
    train, val = fit_parts(faces, split, cfg)
    trainer = Trainer(cfg, train, val)
    history = list(trainer.epochs())
    assert [m["epoch"] for m in history] == [1, 2, 3]
    last = history[-1]
    median = train.ages.float().median()
    constant_mae = (val.ages.float() - median).abs().mean().item()
    majority = max(val.genders.float().mean().item(), 1 - val.genders.float().mean().item())
    assert last["val_age_mae"] < constant_mae - 1.0
    assert last["val_gender_acc"] > majority + 0.03


def test_a_final_retraining_scores_its_held_out_part_after_the_last_epoch_only(few):
    cfg, faces, split = few
    cfg = TrainConfig.from_dict({"epochs": 3}, cfg)
    train, test = fit_parts(faces, split, cfg)
    every = list(Trainer(cfg, train, test, held_out="test").epochs())
    last_only = list(Trainer(cfg, train, test, held_out="test", score_each_epoch=False).epochs())
    for m in last_only[:-1]:
        assert all(math.isnan(m[k]) for k in ("test_loss", "test_gender_acc", "test_age_mae", "objective"))
        assert m["score_seconds"] == 0.0
    assert last_only[-1]["score_seconds"] > 0 and every[0]["score_seconds"] > 0
    # the same training (scoring draws no random numbers), so the same final scores
    for k in ("train_loss", "test_loss", "test_gender_acc", "test_age_mae", "objective"):
        assert last_only[-1][k] == pytest.approx(every[-1][k], rel=1e-5)
    # ReduceLROnPlateau steps on the held-out objective, so it is scored every epoch whatever was asked
    plateau = TrainConfig.from_dict({"epochs": 2, "schedule": "plateau"}, cfg)
    assert all(math.isfinite(m["objective"]) for m in Trainer(plateau, train, test, score_each_epoch=False).epochs())


def test_checkpoint_is_plain_and_resumes_exactly(few, tmp_path):
    cfg, faces, split = few
    cfg = TrainConfig.from_dict({"epochs": 2}, cfg)
    train, val = fit_parts(faces, split, cfg)
    straight = Trainer(cfg, train, val)
    full = list(straight.epochs())

    first = Trainer(cfg, train, val)
    next(first.epochs())
    torch.save(first.checkpoint(), tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["config"]["arch"] == "scratch"
    resumed = Trainer(cfg, train, val)
    resumed.load_checkpoint(ckpt)
    rest = list(resumed.epochs())
    assert len(rest) == 1
    assert rest[0]["train_loss"] == pytest.approx(full[1]["train_loss"], rel=1e-5)
    assert rest[0]["objective"] == pytest.approx(full[1]["objective"], rel=1e-5)

    model, restored_cfg = load_model(ckpt)
    assert restored_cfg == cfg
    data = TensorData.from_faces(val, torch.device("cpu"))
    first.model.eval()
    assert score(model, data, 0.5) == pytest.approx(score(first.model, data, 0.5))


def test_mixup_and_erasing_change_training_and_resume_exactly(few, tmp_path):
    cfg, faces, split = few
    plain = TrainConfig.from_dict({"epochs": 2}, cfg)
    cfg = TrainConfig.from_dict({"mixup_alpha": 0.4, "aug_erase": 0.5}, plain)
    train, val = fit_parts(faces, split, cfg)
    changes_training_and_resumes_exactly(cfg, plain, train, val, tmp_path)


def changes_training_and_resumes_exactly(cfg, plain, train, val, tmp_path):
    """``cfg``'s first epoch differs from ``plain``'s, and a run of ``cfg`` checkpointed after it and resumed ends
    as a straight run does."""
    full = list(Trainer(cfg, train, val).epochs())
    assert full[0]["train_loss"] != pytest.approx(next(Trainer(plain, train, val).epochs())["train_loss"], rel=1e-3)
    first = Trainer(cfg, train, val)
    next(first.epochs())
    torch.save(first.checkpoint(), tmp_path / "ckpt.pt")
    resumed = Trainer(cfg, train, val)
    resumed.load_checkpoint(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    rest = list(resumed.epochs())
    assert rest[0]["train_loss"] == pytest.approx(full[1]["train_loss"], rel=1e-5)
    assert rest[0]["objective"] == pytest.approx(full[1]["objective"], rel=1e-5)


def test_group_balance_draws_groups_equally_and_resumes_exactly(few, tmp_path):
    cfg, faces, split = few
    plain = TrainConfig.from_dict({"epochs": 2}, cfg)
    cfg = TrainConfig.from_dict({"group_balance": 1.0}, plain)
    train, val = fit_parts(faces, split, cfg)
    trainer = Trainer(cfg, train, val)
    groups = [race_group(n) for n in train.names]
    drawn = torch.multinomial(trainer.draw_weights, 20000, replacement=True).tolist()
    shares = {g: sum(groups[i] == g for i in drawn) / len(drawn) for g in set(groups)}
    assert max(shares.values()) - min(shares.values()) < 0.03  # as sampled, the largest group is several times the least
    assert Trainer(plain, train, val).draw_weights is None
    changes_training_and_resumes_exactly(cfg, plain, train, val, tmp_path)


def test_mixup_draws_a_larger_share_and_a_permutation():
    torch.manual_seed(0)
    for _ in range(20):
        lam, partner = mixup_draw(16, 0.4, torch.device("cpu"))
        assert 0.5 <= lam <= 1 and sorted(partner.tolist()) == list(range(16))


def test_divergence_raises_a_clear_error(few):
    cfg, faces, split = few
    cfg = TrainConfig.from_dict({"optimizer": "sgd", "lr": 1e12, "grad_clip": 0.0, "epochs": 3}, cfg)
    train, val = fit_parts(faces, split, cfg)
    with pytest.raises(NonFiniteLossError, match="diverged"):
        list(Trainer(cfg, train, val).epochs())


def test_pretrained_unfreezes_on_schedule(few):
    cfg, faces, split = few
    cfg = TrainConfig.from_dict({"arch": "pretrained", "unfreeze_epoch": 1, "epochs": 2, "image_size": 64}, cfg)
    train, val = fit_parts(faces, split, cfg)
    trainer = Trainer(cfg, train, val)
    frozen_weight = trainer.model.backbone[0][0].weight.detach().clone()
    m1 = next(trainer.epochs())
    assert m1["backbone_frozen"] == 1 and torch.equal(trainer.model.backbone[0][0].weight, frozen_weight)
    m2 = next(trainer.epochs())
    assert m2["backbone_frozen"] == 0 and not torch.equal(trainer.model.backbone[0][0].weight, frozen_weight)


def test_cli_writes_a_complete_run_folder(data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "experiments/train.py", "--arch", "scratch", "--data", str(data_dir), "--epochs", "2",
           "--image-size", "32", "--max-images", "200", "--set", "depth=2", "base_width=8", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "epoch   2/2" in result.stdout and "test (best epoch" in result.stdout
    for name in ("config.json", "split.json", "metrics.csv", "metrics.json", "best.pt", "test_metrics.json"):
        assert (out / name).is_file(), name
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["depth"] == 2 and cfg["data_dir"] == str(data_dir)
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["n_test"] == len(json.loads((out / "split.json").read_text())["test"])
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["epoch"] == test["best_epoch"]


def test_cli_bad_input_fails_with_a_message(tmp_path):
    cmd = [sys.executable, "experiments/train.py", "--data", str(tmp_path / "missing"), "--epochs", "1"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run(cmd[:2] + ["--set", "learning_rate=1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown config key" in result.stderr and "Traceback" not in result.stderr


def test_distribution_loss_adds_the_label_distribution_kl():
    from experiments.train import DLDL_SIGMA, loss_terms

    age = torch.tensor([20.0, 50.0])
    bins = torch.arange(117.0)
    # logits equal to the target's log-density: the KL term vanishes, only BCE and L1 remain
    target_logits = -0.5 * ((bins - age[:, None]) / DLDL_SIGMA) ** 2
    pred = (torch.softmax(target_logits, 1) * bins).sum(1)
    logit, gender = torch.zeros(2), torch.tensor([0.0, 1.0])
    exact, bce, l1 = loss_terms(pred, logit, age, gender, 0.1, target_logits)
    torch.testing.assert_close(exact, bce + 0.1 * l1, atol=1e-5, rtol=0)
    wrong, _, _ = loss_terms(pred, logit, age, gender, 0.1, target_logits.flip(0))
    assert wrong > exact + 1.0


def test_ema_is_scored_saved_and_resumed_exactly(few, tmp_path):
    cfg, faces, split = few
    cfg = TrainConfig.from_dict({"epochs": 2, "ema_decay": 0.99, "age_head": "distribution"}, cfg)
    train, val = fit_parts(faces, split, cfg)
    straight = Trainer(cfg, train, val)
    full = list(straight.epochs())
    ckpt_full = straight.checkpoint()
    # the scored and saved weights are the average, not the trained ones
    assert not torch.equal(ckpt_full["model"]["heads.age.weight"], ckpt_full["train_model"]["heads.age.weight"])
    assert full[-1]["val_age_mae"] == pytest.approx(score(straight.ema.module, straight.held_out_data,
                                                          cfg.age_loss_weight, straight.precision)["age_mae"])
    first = Trainer(cfg, train, val)
    next(first.epochs())
    torch.save(first.checkpoint(), tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = Trainer(cfg, train, val)
    resumed.load_checkpoint(ckpt)
    assert resumed.ema.updates == first.ema.updates > 0
    rest = list(resumed.epochs())
    # the second epoch's metrics are the moving average's, and the same as the uninterrupted run's
    assert rest[0]["train_loss"] == pytest.approx(full[1]["train_loss"], rel=1e-5)
    assert rest[0]["objective"] == pytest.approx(full[1]["objective"], rel=1e-5)
    model, _ = load_model(ckpt_full)
    assert torch.equal(model.state_dict()["heads.age.weight"], ckpt_full["model"]["heads.age.weight"])


def test_ema_starts_with_a_short_memory():
    from experiments.ema import WeightEMA

    ema = WeightEMA(torch.nn.Linear(2, 1), 0.999)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.updates = 10_000
    assert ema.current_decay() == 0.999
