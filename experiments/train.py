"""Train one configuration and score it: the loop every search trial and retraining runs.

    python experiments/train.py --arch scratch --data ../shared/data/utkface-5k --epochs 10
    python experiments/train.py --config seed_b --data DIR --out runs/train/b

The data stays a uint8 tensor on the training device for the whole run (on CUDA: resident on the GPU);
each batch is converted, augmented and run in the precision and layout ``experiments.device`` picks for the
device (bf16 autocast where the hardware computes bf16 natively, channels_last).
"""
import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from data_utils.augment import augment_batch
from data_utils.dataset import (SPLIT_FILE, Faces, NoUsableImagesError, Split, group_draw_weights, load_faces,
                                 make_split)
from data_utils.sources import join_sources
from experiments.config import TrainConfig, load_config_file, parse_overrides
from experiments.device import Precision, eval_batch_size, resolve_device, resolve_precision  # noqa: F401  (resolve_device: re-exported)
from experiments.ema import WeightEMA
from experiments.objective import METRIC, gender_accuracy, objective, predicted_female
from models import AgeGenderNet, build_model, count_parameters


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the configuration diverged."""


@dataclass
class TensorData:
    """Images (uint8), ages (float years) and genders (float 0/1) on one device.

    On the CPU a view's ``images`` stay the shared store of every face and ``rows`` pick this part's, so
    concurrent trials on a node share one copy of the pixels; on a GPU the part is copied there once.
    """

    images: torch.Tensor
    ages: torch.Tensor
    genders: torch.Tensor
    rows: torch.Tensor | None = None

    @classmethod
    def from_faces(cls, faces: Faces, device: torch.device) -> "TensorData":
        labels = faces.ages.to(device, torch.float32), faces.genders.to(device, torch.float32)
        if faces.rows is not None and device.type == "cpu":
            return cls(faces.images, *labels, faces.rows)
        return cls(faces.pixels().to(device), *labels)

    def __len__(self) -> int:
        return self.ages.shape[0]

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """The uint8 images of positions ``index`` of this part."""
        return self.images[index if self.rows is None else self.rows[index.to(self.rows.device)]]


def to_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = images.float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# the label distribution of the distribution age head: a Gaussian of this spread (years) around the true age
DLDL_SIGMA = 2.0


def loss_terms(age_pred, gender_logit, age, gender, age_weight: float, age_logits=None):
    """BCE on the gender logit plus ``age_weight`` × L1 on age in years, plus for the distribution head the KL
    divergence from a Gaussian label distribution (DLDL-v2) to the predicted one; returns (total, bce, l1)."""
    bce = F.binary_cross_entropy_with_logits(gender_logit.float(), gender)
    l1 = F.l1_loss(age_pred.float(), age)
    total = bce + age_weight * l1
    if age_logits is not None:
        bins = torch.arange(age_logits.shape[1], device=age_logits.device, dtype=torch.float32)
        target = torch.softmax(-0.5 * ((bins - age[:, None]) / DLDL_SIGMA) ** 2, dim=1)
        total = total + F.kl_div(F.log_softmax(age_logits.float(), dim=1), target, reduction="batchmean")
    return total, bce, l1


def mixup_draw(n: int, alpha: float, device: torch.device) -> tuple[float, torch.Tensor]:
    """Mixup's weight for one batch, λ ~ Beta(α, α) kept ≥ 0.5 so each image stays the larger part of its
    blend, and each image's partner (a permutation of the batch)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return max(lam, 1 - lam), torch.randperm(n, device=device)


@torch.no_grad()
def predict(model: AgeGenderNet, images: torch.Tensor | TensorData, batch_size: int | None = None,
            precision: Precision | None = None, with_spread: bool = False) -> tuple[torch.Tensor, ...]:
    """Age (years) and P(female) for uint8 images (a tensor, or a part's ``TensorData``), in eval mode, in batches
    of ``batch_size`` (default: the device's ``eval_batch_size``), in ``precision`` (default fp32; training passes
    its own); float32 CPU tensors. ``with_spread`` adds the spread of the views' ages
    (``AgeGenderNet.forward_with_spread``)."""
    device = next(model.parameters()).device
    batch_size = batch_size or eval_batch_size(device)
    precision = precision or resolve_precision("fp32", device)
    was_training = model.training
    model.eval()
    ages, probs, spreads = [], [], []
    n = len(images) if isinstance(images, TensorData) else images.shape[0]
    for i in range(0, n, batch_size):
        chunk = (images.batch(torch.arange(i, min(n, i + batch_size))) if isinstance(images, TensorData)
                 else images[i:i + batch_size])
        x = to_input(chunk.to(device), precision.channels_last)
        with precision.autocast():
            age, logit, spread = model.forward_with_spread(x) if with_spread else (*model(x), None)
        ages.append(age.float().cpu())
        probs.append(torch.sigmoid(logit.float()).cpu())
        if with_spread:
            spreads.append(spread.float().cpu())
    model.train(was_training)
    return (torch.cat(ages), torch.cat(probs)) + ((torch.cat(spreads),) if with_spread else ())


HELD_OUT_METRICS = ("loss", "gender_acc", "age_mae", METRIC)  # the keys of score()


def score(model: AgeGenderNet, data: TensorData, age_weight: float,
          precision: Precision | None = None) -> dict[str, float]:
    """Loss, gender accuracy and age MAE of ``model`` on ``data``, plus the objective."""
    age_pred, prob = predict(model, data, precision=precision)
    age, gender = data.ages.cpu(), data.genders.cpu()
    logit = torch.logit(prob.clamp(1e-6, 1 - 1e-6))
    loss, _, _ = loss_terms(age_pred, logit, age, gender, age_weight)
    acc = gender_accuracy(prob, gender)
    mae = (age_pred - age).abs().mean().item()
    return dict(zip(HELD_OUT_METRICS, (loss.item(), acc, mae, objective(acc, mae))))


def _param_groups(model: AgeGenderNet, cfg: TrainConfig) -> list[dict]:
    """Backbone and the rest, each split into decayed weights and undecayed biases/norm parameters."""
    groups = []
    for part, lr_mult in ((model.backbone, cfg.backbone_lr_mult if cfg.arch == "pretrained" else 1.0),
                          (torch.nn.ModuleList([model.neck, model.heads]), 1.0)):
        decay = [p for p in part.parameters() if p.ndim > 1]
        no_decay = [p for p in part.parameters() if p.ndim <= 1]
        groups.append({"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr * lr_mult})
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr * lr_mult})
    return groups


def make_optimizer(model: AgeGenderNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


HELD_OUT_PARTS = ("val", "test")


class Trainer:
    """Owns the model, optimiser and schedule of one configuration; ``epochs()`` yields metrics once per epoch.

    ``held_out`` names the part it scores on after each epoch ("val" while searching, "test" when a final
    retraining on train+val is scored), and prefixes those metrics: ``val_gender_acc`` or ``test_gender_acc``.
    With ``score_each_epoch=False`` it is scored after the last epoch only (earlier epochs report NaN): a final
    retraining makes no choice on its held-out part, and scoring it every epoch costs about a seventh of the run.

    The state it returns from ``checkpoint()`` restores it exactly (``load_checkpoint``), so a run that stops
    can go on where it was, as Ray Tune does when it retries a failed trial.
    """

    def __init__(self, cfg: TrainConfig, train: Faces, held_out_faces: Faces, device: torch.device | None = None,
                 imagenet_state: dict[str, torch.Tensor] | None = None, held_out: str = "val",
                 score_each_epoch: bool = True):
        if held_out not in HELD_OUT_PARTS:
            raise ValueError(f"held_out must be one of {', '.join(HELD_OUT_PARTS)}, got {held_out!r}")
        self.cfg = cfg
        self.held_out = held_out
        # ReduceLROnPlateau steps on the held-out objective, so that schedule is scored every epoch
        self.score_each_epoch = score_each_epoch or cfg.schedule == "plateau"
        self.device = device or resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        self.precision = resolve_precision(cfg.precision, self.device, cfg.channels_last, cfg.arch,
                                           cfg.image_size)
        torch.manual_seed(cfg.seed)
        self.train_data = TensorData.from_faces(train, self.device)
        self.held_out_data = TensorData.from_faces(held_out_faces, self.device)
        if len(self.train_data) < 2:
            raise ValueError(f"need at least 2 training images, got {len(self.train_data)}")
        self.model = build_model(cfg, imagenet_state=imagenet_state).to(self.device)
        if self.precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.augment = cfg.augmentation()
        # None: each epoch draws every face once; else faces are drawn with replacement by these weights
        self.draw_weights = group_draw_weights(train.names, cfg.group_balance).to(self.device) \
            if cfg.group_balance > 0 else None
        self.optimizer = make_optimizer(self.model, cfg)
        self.ema = WeightEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        n = len(self.train_data)
        # the last partial batch is dropped: BatchNorm cannot train on a batch of one
        self.steps_per_epoch = max(1, n // cfg.batch_size)
        self.batch_size = min(cfg.batch_size, n)
        self.scheduler = self._make_scheduler()
        self.epoch = 0  # epochs completed
        self.best: dict[str, float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []

    def _make_scheduler(self):
        cfg = self.cfg
        if cfg.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=cfg.plateau_factor,
                                                              patience=cfg.plateau_patience)
        if cfg.schedule == "none":
            return None
        total = cfg.epochs * self.steps_per_epoch
        warmup = min(int(cfg.warmup_epochs * self.steps_per_epoch), total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    @property
    def scored_model(self) -> AgeGenderNet:
        """The model that is scored and saved: the weights' moving average when ``ema_decay`` > 0."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def backbone_frozen_now(self) -> bool:
        return self.cfg.arch == "pretrained" and self.epoch < self.cfg.unfreeze_epoch

    def train_one_epoch(self) -> dict[str, float]:
        cfg, data = self.cfg, self.train_data
        self.model.freeze_backbone(self.backbone_frozen_now)
        self.model.train()
        perm = torch.randperm(len(data), device=self.device) if self.draw_weights is None else \
            torch.multinomial(self.draw_weights, len(data), replacement=True)
        totals = torch.zeros(4, device=self.device)
        for step in range(self.steps_per_epoch):
            idx = perm[step * self.batch_size:(step + 1) * self.batch_size]
            x = augment_batch(to_input(data.batch(idx), False), self.augment)
            age, gender = data.ages[idx], data.genders[idx]
            if cfg.mixup_alpha > 0:
                lam, partner = mixup_draw(len(idx), cfg.mixup_alpha, self.device)
                x = lam * x + (1 - lam) * x[partner]
            if self.precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.precision.autocast():
                age_pred, logit, age_logits = self.model.outputs(x)
            loss, bce, l1 = loss_terms(age_pred, logit, age, gender, cfg.age_loss_weight, age_logits)
            if cfg.mixup_alpha > 0:
                # every term is mixed with the images' weights: BCE and the KL are linear in their targets,
                # and an L1 to the mixed age would reward predicting the mean of two faces' ages
                other = loss_terms(age_pred, logit, age[partner], gender[partner], cfg.age_loss_weight, age_logits)
                loss, bce, l1 = (lam * a + (1 - lam) * b for a, b in zip((loss, bce, l1), other))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
                self.scheduler.step()
            correct = (predicted_female(torch.sigmoid(logit.detach().float())).float() == gender).float().mean()
            totals += torch.stack([loss.detach(), bce.detach(), l1.detach(), correct])
        train_loss, _, train_mae, train_acc = (totals / self.steps_per_epoch).tolist()
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(f"training loss became {train_loss} in epoch {self.epoch + 1} "
                                     f"(lr={cfg.lr:g}, optimizer={cfg.optimizer}); the configuration diverged")
        return {"train_loss": train_loss, "train_gender_acc": train_acc, "train_age_mae": train_mae}

    def epochs(self) -> Iterator[dict[str, float]]:
        """Train the remaining epochs; after each, yield its metrics (held-out ones prefixed ``val_``/``test_``)."""
        while self.epoch < self.cfg.epochs:
            start = time.perf_counter()
            frozen = self.backbone_frozen_now
            metrics = self.train_one_epoch()
            if self.cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if self.score_each_epoch or self.epoch + 1 >= self.cfg.epochs:
                val = score(self.scored_model, self.held_out_data, self.cfg.age_loss_weight, self.precision)
                if not all(math.isfinite(v) for v in val.values()):
                    raise NonFiniteLossError(f"{self.held_out} metrics became non-finite in epoch {self.epoch + 1} "
                                             f"({val}); the configuration diverged")
                score_seconds = time.perf_counter() - start - seconds
            else:
                val, score_seconds = dict.fromkeys(HELD_OUT_METRICS, math.nan), 0.0
            self.epoch += 1
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(val[METRIC])
            metrics.update({f"{self.held_out}_{k}" if k != METRIC else k: v for k, v in val.items()})
            metrics.update({
                "epoch": self.epoch,
                "lr": self.optimizer.param_groups[-1]["lr"],
                "backbone_frozen": int(frozen),
                "epoch_seconds": seconds,
                "score_seconds": score_seconds,
                "train_images_per_second": self.steps_per_epoch * self.batch_size / seconds,
            })
            if math.isfinite(metrics[METRIC]) and (self.best is None or metrics[METRIC] < self.best[METRIC]):
                self.best = metrics
                self.best_state = {k: v.detach().clone() for k, v in self.scored_model.state_dict().items()}
            self.history.append(metrics)
            yield metrics

    def checkpoint(self, include_best: bool = False) -> dict:
        """A plain dict (tensors, numbers, strings) that ``torch.load(..., weights_only=True)`` reads back.

        ``model`` holds the weights to score and export (the moving average with ``ema_decay``); the weights
        being trained are then kept apart in ``train_model``, so a resumed run goes on exactly.
        """
        ckpt = {
            "model": self.scored_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "config": self.cfg.to_dict(),
            "metrics": self.history[-1] if self.history else {},
            "best_metrics": self.best,
            "history": self.history,
            "rng": torch.get_rng_state(),
            # batches are drawn and augmented on the training device, so its generator is saved too
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None,
        }
        if self.ema is not None:
            ckpt["train_model"] = self.model.state_dict()
            ckpt["ema_updates"] = self.ema.updates
        if include_best and self.best_state is not None:
            ckpt["best_model"] = self.best_state
        return ckpt

    def load_checkpoint(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
        if self.ema is not None:
            self.ema.load_state_dict({"module": ckpt["model"], "updates": ckpt.get("ema_updates", 0)})
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch = int(ckpt["epoch"])
        self.best = ckpt.get("best_metrics")
        self.history = list(ckpt.get("history", []))
        self.best_state = ckpt.get("best_model")
        torch.set_rng_state(ckpt["rng"])
        if self.cuda and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)


def load_model(ckpt: dict, device: str | torch.device = "cpu", which: str = "model") -> tuple[AgeGenderNet, TrainConfig]:
    """Rebuild a model from a checkpoint's own config; ``which`` picks 'model' (last) or 'best_model' weights."""
    cfg = TrainConfig.from_saved(ckpt["config"])
    model = build_model(cfg, load_weights=False)
    model.load_state_dict(ckpt[which] if which in ckpt else ckpt["model"])
    return model.to(device).eval(), cfg


def prepare_data(cfg: TrainConfig) -> tuple[Faces, Split]:
    """Load (or build) the tensor cache for ``cfg`` and split it."""
    faces = load_faces(cfg.data_dir, cfg.image_size, cfg.cache_dir)
    split = make_split(faces, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.max_images)
    return faces, split


def fit_parts(faces: Faces, split: Split, cfg: TrainConfig) -> tuple[Faces, Faces]:
    """The (train, validation) parts for ``cfg`` as views of ``faces``: train+val against test when ``train_on_val``
    (final retraining)."""
    if cfg.train_on_val:
        return faces.view(np.concatenate([split.train, split.val])), faces.view(split.test)
    return faces.view(split.train), faces.view(split.val)


# ----------------------------------------------------------------------------------------------------------------
# command line


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train one age/gender model on a UTKFace folder and score it.")
    parser.add_argument("--arch", default=None, help="scratch or pretrained (default: the config's, else scratch)")
    parser.add_argument("--data", default=None, action="append",
                        help="a folder of UTKFace crops or a labels CSV; repeatable (default: $UTKFACE_DIR)")
    parser.add_argument("--config", default=None,
                        help="JSON config file or preset name in experiments/configs/ (seed_a, seed_b, ...)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--image-size", type=int, default=None, help="override the config's image size")
    parser.add_argument("--max-images", type=int, default=None, help="train on a seeded subset of this many images")
    parser.add_argument("--batch-size", type=int, default=None, help="override the config's batch size")
    parser.add_argument("--lr", type=float, default=None, help="override the config's learning rate")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--weights", default=None,
                        help="MobileNetV2 weights file (default: $MOBILENET_V2_WEIGHTS, hub cache, package)")
    parser.add_argument("--cache-dir", default=None,
                        help="tensor cache folder (default: $FACETUNE_CACHE or ~/.cache/facetune)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any config field")
    parser.add_argument("--out", default=None, help="run folder (default: runs/train/<arch>-<time>)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    flags = {"arch": args.arch, "data_dir": join_sources(args.data) if args.data else None, "epochs": args.epochs, "image_size": args.image_size,
             "max_images": args.max_images, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "device": args.device, "weights_path": args.weights, "cache_dir": args.cache_dir}
    values.update({k: v for k, v in flags.items() if v is not None})
    values.update(parse_overrides(args.set))
    if not values.get("data_dir") and os.environ.get("UTKFACE_DIR"):
        values["data_dir"] = os.environ["UTKFACE_DIR"]
    return TrainConfig.from_dict(values)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=1))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def main(args: argparse.Namespace) -> int:
    from torch.utils.tensorboard import SummaryWriter

    try:
        cfg = config_from_args(args)
        faces, split = prepare_data(cfg)
    except (FileNotFoundError, NotADirectoryError, PermissionError, KeyError, ValueError, NoUsableImagesError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(args.out or f"runs/train/{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    split.save(run_dir / SPLIT_FILE, faces)
    train, val = fit_parts(faces, split, cfg)
    trainer = Trainer(cfg, train, val, held_out="test" if cfg.train_on_val else "val")
    part = trainer.held_out
    print(f"{cfg.arch}: {count_parameters(trainer.model) / 1e6:.2f}M parameters on {trainer.device}; "
          f"{len(train)} train / {len(val)} val / {len(split.test)} test images at {cfg.image_size}px; run folder {run_dir}\n"
          f"training in {trainer.precision.describe(trainer.device)}")
    writer = SummaryWriter(str(run_dir / "tb"))
    for m in trainer.epochs():
        for key, value in m.items():
            if key != "epoch":
                writer.add_scalar(key, value, m["epoch"])
        print(f"epoch {m['epoch']:3d}/{cfg.epochs}  loss {m['train_loss']:.3f}  {part} acc {m[part + '_gender_acc']:.1%}  "
              f"mae {m[part + '_age_mae']:.2f}  {METRIC} {m[METRIC]:.3f}  lr {m['lr']:.2e}"
              f"{'  (backbone frozen)' if m['backbone_frozen'] else ''}  {m['epoch_seconds']:.1f}s "
              f"({m['train_images_per_second']:.0f} img/s)", flush=True)
        # retraining on train+val has no validation split to choose an epoch with: it keeps the last one
        if trainer.best is m or cfg.train_on_val:
            torch.save(trainer.checkpoint(), run_dir / "best.pt")
        write_metrics(run_dir, trainer.history)
    best_ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    model, _ = load_model(best_ckpt, trainer.device)
    test = score(model, TensorData.from_faces(faces.subset(split.test), trainer.device), cfg.age_loss_weight,
                 trainer.precision)
    test = {"best_epoch": best_ckpt["epoch"], **{f"test_{k}" if k != METRIC else k: v for k, v in test.items()},
            "n_test": len(split.test)}
    (run_dir / "test_metrics.json").write_text(json.dumps(test, indent=2) + "\n")
    hparams = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
    writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in test.items()}, run_name="hparams")
    writer.close()
    print(f"test (best epoch {test['best_epoch']}): gender acc {test['test_gender_acc']:.1%}, "
          f"age MAE {test['test_age_mae']:.2f}, {METRIC} {test[METRIC]:.3f}  → {run_dir}")
    return 0


def cli() -> int:
    """The ``facetune-train`` entry point."""
    return main(get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(cli())
