"""Which recipe techniques pay? Each against the baseline, same split, budget and seeds; test scores; JSON.

    python experiments/benchmarks/ablation.py --data ../shared/data/utkface-5k --arch pretrained \
        --image-size 96 --epochs 8 --seeds 0 1 2 --jobs 2 --out ablation.json

Every run trains on the train split, watches the validation split, and is scored on the test split, which no
choice here looks at. Two trainings per seed — the baseline and the distribution age head — each keep a moving
average of their weights beside the weights they train (the average never feeds back into training, so the
trained weights are exactly the baseline's), and every other technique is read off the same runs:

- ``ema``: the moving average (``ema_decay``) instead of the last weights;
- ``tta_flip``: the last weights, each face scored with its mirror image; ``ema_tta``: both;
- ``best_val_epoch``: the weights of the epoch with the best validation objective instead of the last epoch;
- ``ensemble``: the mean of the seeds' predictions (one value per seed set, so it has no seed interval);
- ``distribution``: the DLDL-v2 age head (``age_head=distribution``), its last weights; ``distribution_ema_tta``:
  with its moving average and flips.

Each technique is compared with the baseline (last weights of the regression head) paired by seed: mean ± std
over seeds, the paired difference with a 95% t-interval over seeds, and a 95% paired bootstrap interval over
test images (the seeds' differences averaged per image, images resampled).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from experiments.benchmarks.parallel import emit, run_each
from experiments.benchmarks.precision_quality import paired
from experiments.config import TrainConfig, parse_overrides
from experiments.device import device_name, resolve_device
from experiments.objective import METRIC, objective, predicted_female
from experiments.train import TensorData, Trainer, fit_parts, predict, prepare_data, score

TRAININGS = {"baseline": {}, "distribution": {"age_head": "distribution"}}
EMA_DECAY = 0.998


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Each recipe technique against the baseline, paired by seed, on test.")
    p.add_argument("--data", default=None, help="UTKFace folder (default: $UTKFACE_DIR)")
    p.add_argument("--arch", default="pretrained")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ema-decay", type=float, default=EMA_DECAY)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="trainings at once, one thread each (default: one per core)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="baseline config overrides")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--run-one", nargs=2, metavar=("TRAINING", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--to", default=None, help=argparse.SUPPRESS)
    return p


def base_config(args: argparse.Namespace) -> TrainConfig:
    # the baseline scores one view per face; zoomed views (tta_zoom) are measured by tta_views.py
    return TrainConfig.from_dict({"arch": args.arch, "data_dir": args.data or os.environ.get("UTKFACE_DIR"),
                                  "image_size": args.image_size, "epochs": args.epochs, "ema_decay": args.ema_decay,
                                  "tta_zoom": 0.0, **parse_overrides(args.set)})


def run_one(args: argparse.Namespace, training: str, seed: int) -> dict:
    """Train one (training, seed); return test predictions of every model read off it, and its timing."""
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict({**TRAININGS[training], "seed": seed}, base_config(args))
    faces, split = prepare_data(cfg)
    train, val = fit_parts(faces, split, cfg)
    start = time.perf_counter()
    trainer = Trainer(cfg, train, val)
    best_val, best_state = float("inf"), None
    for _ in trainer.epochs():
        # the trained weights' own validation score (the trainer scores the moving average)
        raw = score(trainer.model, trainer.held_out_data, cfg.age_loss_weight, trainer.precision)[METRIC]
        if raw < best_val:
            best_val, best_state = raw, {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seconds = time.perf_counter() - start
    test = TensorData.from_faces(faces.view(split.test), trainer.device)

    def preds(model, tta: bool = False) -> dict:
        model.tta_flip = tta
        age, p = predict(model, test, precision=trainer.precision)
        model.tta_flip = False
        return {"age": age.tolist(), "p_female": p.tolist()}

    out = {"last": preds(trainer.model), "ema": preds(trainer.ema.module), "tta_flip": preds(trainer.model, True),
           "ema_tta": preds(trainer.ema.module, True)}
    trainer.model.load_state_dict(best_state)
    out["best_val_epoch"] = preds(trainer.model)
    return {"training": training, "seed": seed, "seconds": seconds, "predictions": out,
            "age": test.ages.tolist(), "gender": test.genders.tolist()}


def per_image(pred: dict, age: np.ndarray, gender: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct 0/1, absolute age error) per test image."""
    correct = (predicted_female(np.asarray(pred["p_female"])) == (gender == 1)).astype(float)
    return correct, np.abs(np.asarray(pred["age"]) - age)


def bootstrap_diff(diff: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean of per-image differences (already averaged over seeds)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), (n_boot, len(diff)))
    stats = diff[idx].mean(axis=1)
    return [round(float(np.quantile(stats, 0.025)), 4), round(float(np.quantile(stats, 0.975)), 4)]


def summarize(runs: list[dict], seeds: list[int]) -> dict:
    age, gender = np.asarray(runs[0]["age"]), np.asarray(runs[0]["gender"])
    by = {(r["training"], r["seed"]): r for r in runs}
    models = {"baseline": ("baseline", "last"), "ema": ("baseline", "ema"), "tta_flip": ("baseline", "tta_flip"),
              "ema_tta": ("baseline", "ema_tta"), "best_val_epoch": ("baseline", "best_val_epoch"),
              "distribution": ("distribution", "last"), "distribution_ema_tta": ("distribution", "ema_tta")}
    scores = {name: [per_image(by[(training, s)]["predictions"][key], age, gender) for s in seeds]
              for name, (training, key) in models.items() if all((training, s) in by for s in seeds)}
    base = scores["baseline"]
    out = {}
    for name, per in scores.items():
        acc = [float(c.mean()) for c, _ in per]
        mae = [float(e.mean()) for _, e in per]
        row = {"test_gender_acc": {"mean": round(float(np.mean(acc)), 4), "std": round(float(np.std(acc, ddof=1)), 4)},
               "test_age_mae": {"mean": round(float(np.mean(mae)), 3), "std": round(float(np.std(mae, ddof=1)), 3)},
               METRIC: round(float(np.mean([objective(a, m) for a, m in zip(acc, mae)])), 4)}
        if name != "baseline":
            base_acc = [float(c.mean()) for c, _ in base]
            base_mae = [float(e.mean()) for _, e in base]
            row["minus_baseline"] = {
                "test_gender_acc": {**paired(acc, base_acc), "bootstrap_ci95": bootstrap_diff(
                    np.mean([c - b for (c, _), (b, _) in zip(per, base)], axis=0))},
                "test_age_mae": {**paired(mae, base_mae), "bootstrap_ci95": bootstrap_diff(
                    np.mean([e - b for (_, e), (_, b) in zip(per, base)], axis=0))}}
        out[name] = row
    for training in TRAININGS:
        if all((training, s) in by for s in seeds):
            members = [by[(training, s)]["predictions"]["last"] for s in seeds]
            mean = {"age": np.mean([m["age"] for m in members], axis=0),
                    "p_female": np.mean([m["p_female"] for m in members], axis=0)}
            c, e = per_image(mean, age, gender)
            base_c = np.mean([c0 for c0, _ in scores[training]], axis=0)
            base_e = np.mean([e0 for _, e0 in scores[training]], axis=0)
            out[f"{training}_ensemble_of_{len(seeds)}"] = {
                "test_gender_acc": round(float(c.mean()), 4), "test_age_mae": round(float(e.mean()), 3),
                "minus_mean_member": {"test_gender_acc": {"mean": round(float((c - base_c).mean()), 4),
                                                          "bootstrap_ci95": bootstrap_diff(c - base_c)},
                                      "test_age_mae": {"mean": round(float((e - base_e).mean()), 3),
                                                       "bootstrap_ci95": bootstrap_diff(e - base_e)}}}
    return out


def main(args: argparse.Namespace) -> int:
    if args.run_one:
        result = run_one(args, args.run_one[0], int(args.run_one[1]))
        Path(args.to).write_text(json.dumps(result))
        return 0
    cfg = base_config(args)
    prepare_data(cfg)  # decode once, before the parallel runs read the cache
    jobs = [(t, s) for s in args.seeds for t in TRAININGS]
    started = time.perf_counter()
    runs = run_each(os.path.abspath(__file__), jobs, lambda job: [
        "--arch", args.arch, "--image-size", str(args.image_size), "--epochs", str(args.epochs),
        "--ema-decay", str(args.ema_decay), "--set", *args.set] + (["--data", args.data] if args.data else []),
        args.jobs)
    out = {"device": device_name(resolve_device("auto")), "torch": torch.__version__, "arch": args.arch,
           "image_size": args.image_size, "epochs": args.epochs, "ema_decay": args.ema_decay, "seeds": args.seeds,
           "overrides": args.set, "n_test": len(runs[0]["age"]), "jobs": args.jobs,
           "wall_seconds": round(time.perf_counter() - started, 1),
           "train_seconds": {f"{r['training']}-{r['seed']}": round(r["seconds"], 1) for r in runs},
           "models": summarize(runs, args.seeds)}
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
