"""More seeds or more epochs? What a time budget's retraining should buy, measured on the validation split.

    python experiments/benchmarks/seeds_epochs.py --data ../shared/data/utkface-5k --config tuned_b \
        --epochs 5 6 8 --seeds 0 1 2 3 --jobs 2 --out seeds_epochs.json

A budgeted retraining (``search.budget.plan_retrain``) chooses between more seeds and longer runs (a cosine
schedule, so a run of any length anneals); ``--image-size`` measures what a larger face costs and buys. This trains
the configuration for each epoch count with each seed — on the train split, scored on the validation split, so the
choice it informs never looks at the test split — and reports, per epoch count, the single runs (mean ± std over
seeds) and the ensembles of the first n seeds (mean of their ages and P(female)), with the training seconds each
costs; rows of equal cost (seeds × epochs) are the comparison the planner makes.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from experiments.benchmarks.ablation import per_image
from experiments.benchmarks.parallel import emit, run_each, train_to_the_end
from experiments.config import TrainConfig, load_config_file, parse_overrides
from experiments.device import device_name, resolve_device
from experiments.objective import objective
from experiments.train import predict, prepare_data


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Ensembles of n seeds at each epoch count, scored on validation.")
    p.add_argument("--data", default=None, help="UTKFace folder (default: $UTKFACE_DIR)")
    p.add_argument("--config", default="tuned_b", help="config preset or JSON file (experiments/configs)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, nargs="+", default=[5, 6, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="trainings at once, one thread each (default: one per core)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--predictions", action="store_true",
                   help="also write each run's validation predictions, for paired comparisons between variants")
    p.add_argument("--run-one", nargs=2, type=int, metavar=("EPOCHS", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--to", default=None, help=argparse.SUPPRESS)
    return p


def base_config(args: argparse.Namespace) -> TrainConfig:
    values = {**load_config_file(args.config), "data_dir": args.data or os.environ.get("UTKFACE_DIR"),
              "image_size": args.image_size, **parse_overrides(args.set)}
    return TrainConfig.from_dict(values)


def run_one(args: argparse.Namespace, epochs: int, seed: int) -> dict:
    """Train one (epochs, seed) on the train split; its validation predictions and training seconds."""
    trainer, _, _, seconds = train_to_the_end(TrainConfig.from_dict({"epochs": epochs, "seed": seed}, base_config(args)))
    age, prob = predict(trainer.model, trainer.held_out_data, precision=trainer.precision)
    return {"epochs": epochs, "seed": seed, "seconds": seconds, "age": age.tolist(), "p_female": prob.tolist(),
            "true_age": trainer.held_out_data.ages.tolist(), "gender": trainer.held_out_data.genders.tolist()}


def scores(run: dict, true_age: np.ndarray, gender: np.ndarray) -> tuple[float, float]:
    """Gender accuracy and age MAE of a run's (or an ensemble's) ``age`` and ``p_female``."""
    correct, abs_err = per_image(run, true_age, gender)
    return float(correct.mean()), float(abs_err.mean())


def summarize(runs: list[dict], epochs: list[int], seeds: list[int]) -> dict:
    by = {(r["epochs"], r["seed"]): r for r in runs}
    true_age, gender = np.asarray(runs[0]["true_age"]), np.asarray(runs[0]["gender"])
    out = {}
    for e in epochs:
        single = [scores(by[(e, s)], true_age, gender) for s in seeds]
        acc, mae = zip(*single)
        row = {"train_seconds_per_run": round(float(np.mean([by[(e, s)]["seconds"] for s in seeds])), 1),
               "single": {"val_gender_acc": [round(float(np.mean(acc)), 4), round(float(np.std(acc, ddof=1)), 4)],
                          "val_age_mae": [round(float(np.mean(mae)), 3), round(float(np.std(mae, ddof=1)), 3)]},
               "ensembles": {}}
        for n in range(2, len(seeds) + 1):
            members = [by[(e, s)] for s in seeds[:n]]
            a, m = scores({"age": np.mean([r["age"] for r in members], axis=0),
                           "p_female": np.mean([r["p_female"] for r in members], axis=0)}, true_age, gender)
            row["ensembles"][f"{n}_seeds"] = {"val_gender_acc": round(a, 4), "val_age_mae": round(m, 3),
                                              "objective": round(objective(a, m), 4), "cost_epochs": n * e}
        out[f"{e}_epochs"] = row
    return out


def main(args: argparse.Namespace) -> int:
    if args.run_one:
        Path(args.to).write_text(json.dumps(run_one(args, *args.run_one)))
        return 0
    prepare_data(base_config(args))  # decode once, before the parallel runs read the cache
    jobs = [(e, s) for e in sorted(args.epochs, reverse=True) for s in args.seeds]  # longest first: fewer idle cores
    started = time.perf_counter()
    runs = run_each(os.path.abspath(__file__), jobs, lambda job: [
        "--config", args.config, "--image-size", str(args.image_size), "--set", *args.set]
        + (["--data", args.data] if args.data else []), args.jobs)
    out = {"device": device_name(resolve_device("auto")), "torch": torch.__version__, "config": args.config,
           "image_size": args.image_size, "seeds": args.seeds, "overrides": args.set, "n_val": len(runs[0]["gender"]),
           "jobs": args.jobs, "wall_seconds": round(time.perf_counter() - started, 1),
           "by_epochs": summarize(runs, args.epochs, args.seeds)}
    if args.predictions:
        out["true_age"], out["gender"] = runs[0]["true_age"], runs[0]["gender"]
        out["runs"] = [{k: r[k] for k in ("epochs", "seed", "age", "p_female")} for r in runs]
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
