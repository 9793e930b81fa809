"""Does bf16 training cost accuracy? The same configuration, budget and seeds in bf16 and in fp32; test scores; JSON.

    python experiments/benchmarks/precision_quality.py --data ../shared/data/utkface-5k --seeds 3 --epochs 6

Each seed trains once per precision on the same split; scored on the test split in the precision it trained in.
Prints mean ± std per precision, and the paired bf16 − fp32 difference with a 95% t-interval over seeds.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from experiments.config import TrainConfig, parse_overrides
from experiments.device import device_name, resolve_device
from experiments.train import TensorData, Trainer, fit_parts, prepare_data, score

T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # t quantiles by dof


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Test accuracy and MAE of bf16 against fp32 training, paired by seed.")
    p.add_argument("--data", default=None, help="UTKFace folder (default: $UTKFACE_DIR)")
    p.add_argument("--arch", default="scratch")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--set", nargs="*", default=["depth=4", "base_width=16"], metavar="KEY=VALUE")
    return p


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    d = np.asarray(a) - np.asarray(b)
    half = T975.get(len(d) - 1, 1.96) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": round(float(d.mean()), 4), "ci95": [round(float(d.mean() - half), 4), round(float(d.mean() + half), 4)]}


def main(args: argparse.Namespace) -> int:
    base = TrainConfig.from_dict({"arch": args.arch, "data_dir": args.data or os.environ.get("UTKFACE_DIR"),
                                  "image_size": args.image_size, "epochs": args.epochs,
                                  **parse_overrides(args.set)})
    faces, split = prepare_data(base)
    results: dict[str, list[dict]] = {"bf16": [], "fp32": []}
    for seed in range(args.seeds):
        for precision in results:
            cfg = TrainConfig.from_dict({"seed": seed, "precision": precision}, base)
            train, val = fit_parts(faces, split, cfg)
            start = time.perf_counter()
            trainer = Trainer(cfg, train, val)
            for _ in trainer.epochs():
                pass
            test = score(trainer.model, TensorData.from_faces(faces.view(split.test), trainer.device),
                         cfg.age_loss_weight, trainer.precision)
            results[precision].append({"seed": seed, "test_gender_acc": round(test["gender_acc"], 4),
                                       "test_age_mae": round(test["age_mae"], 3),
                                       "seconds": round(time.perf_counter() - start, 1)})
    out = {"device": device_name(resolve_device("auto")), "torch": torch.__version__, "arch": args.arch,
           "epochs": args.epochs, "image_size": args.image_size, "overrides": args.set, "n_test": len(split.test),
           "runs": results}
    for key in ("test_gender_acc", "test_age_mae", "seconds"):
        for precision, runs in results.items():
            values = [r[key] for r in runs]
            out[f"{precision}_{key}"] = {"mean": round(float(np.mean(values)), 4),
                                         "std": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else 0.0}
        out[f"bf16_minus_fp32_{key}"] = paired([r[key] for r in results["bf16"]], [r[key] for r in results["fp32"]])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
