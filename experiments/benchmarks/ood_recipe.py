"""Which recipe pieces (augmentations, sampling, image size at equal time) hold up out of domain? Each variant against
the baseline, paired by seed, on the test split and on labelled sets from other datasets; JSON.

    python experiments/benchmarks/ood_recipe.py --data ../shared/data/utkface-5k \
        --ood ../shared/data/aaf-2k/labels.csv --config tuned_b --image-size 64 --epochs 8 --seeds 0 1 2 \
        --out ood_recipe.json

Every run trains on the train split of ``--data`` (the validation split is watched, never trained on) and ends with
its last weights; it is scored on the test split and on every ``--ood`` set, read as ``search/run.py --ood`` reads
it (photos detected and aligned). No choice inside a run looks at either. Each variant is compared with the
baseline paired by seed (mean difference with a 95% t-interval over seeds) and by face (the seeds' differences
averaged per face, a 95% bootstrap interval over faces). ``--faces-out`` keeps every run's per-face predictions,
so the calibration can be studied on them without training again.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data_utils.labelled import read_set, set_names
from experiments.benchmarks.ablation import bootstrap_diff
from experiments.benchmarks.parallel import emit, run_each, train_to_the_end
from experiments.benchmarks.precision_quality import paired
from experiments.config import TrainConfig, load_config_file, parse_overrides
from experiments.device import device_name, resolve_device
from experiments.objective import predicted_female
from experiments.train import TensorData, predict, prepare_data

PHOTOMETRIC = {"aug_color": 0.3, "aug_grey": 0.1, "aug_blur": 0.2, "aug_jpeg": 0.3}
GEOMETRIC = {"aug_rotate": 15.0, "aug_shift": 0.12, "aug_scale": 0.15}
VARIANTS = {"baseline": {}, "photometric": PHOTOMETRIC, "geometric": GEOMETRIC,
            "photometric_geometric": {**PHOTOMETRIC, **GEOMETRIC},
            "groups_balanced": {"group_balance": 1.0}, "groups_sqrt_balanced": {"group_balance": 0.5},
            # 80 px faces train about 1.7× slower than 64 px ones (throughput.py): 5 epochs take the baseline's time
            "size_80_equal_time": {"image_size": 80, "epochs": 5}}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Augmentation variants against the baseline, in and out of domain.")
    p.add_argument("--data", default=None, help="training folder or labels CSV (default: $UTKFACE_DIR)")
    p.add_argument("--ood", action="append", required=True, help="a labelled set to score on; repeatable")
    p.add_argument("--config", default="tuned_b", help="baseline config: a JSON file or a name in experiments/configs")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=tuple(VARIANTS))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="trainings at once, one thread each")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="baseline config overrides")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--faces-out", default=None, help="write every run's per-face predictions here (JSON)")
    p.add_argument("--run-one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--to", default=None, help=argparse.SUPPRESS)
    return p


def base_config(args: argparse.Namespace) -> TrainConfig:
    values = {k: v for k, v in load_config_file(args.config).items() if not k.startswith("_")}
    values.update({"data_dir": args.data or os.environ.get("UTKFACE_DIR"), "image_size": args.image_size,
                   "epochs": args.epochs, **parse_overrides(args.set)})
    return TrainConfig.from_dict(values)


def ood_sets(args: argparse.Namespace, size: int):
    return [read_set(name, source, size) for name, source in zip(set_names(args.ood), args.ood)]


def run_one(args: argparse.Namespace, variant: str, seed: int) -> dict:
    """Train one (variant, seed); its predictions on the test split and on every set, and its training time."""
    cfg = TrainConfig.from_dict({**VARIANTS[variant], "seed": seed}, base_config(args))
    trainer, faces, split, seconds = train_to_the_end(cfg)
    out = {}
    test = TensorData.from_faces(faces.view(split.test), trainer.device)
    age, p = predict(trainer.model, test, precision=trainer.precision)
    out["test"] = {"age": age.tolist(), "p_female": p.tolist()}
    for labelled in ood_sets(args, cfg.image_size):
        age, p = predict(trainer.model, labelled.images, precision=trainer.precision)
        out[labelled.name] = {"age": age.tolist(), "p_female": p.tolist()}
    return {"variant": variant, "seed": seed, "seconds": seconds, "predictions": out}


def labels(args: argparse.Namespace, cfg: TrainConfig) -> dict[str, dict[str, list]]:
    """Each scored set's true ages and genders, in the order the runs predict them."""
    faces, split = prepare_data(cfg)
    out = {"test": {"age": faces.ages[split.test].tolist(), "gender": faces.genders[split.test].tolist()}}
    for labelled in ood_sets(args, cfg.image_size):
        out[labelled.name] = {"age": [f.age for f in labelled.files], "gender": [f.gender for f in labelled.files]}
    return out


def per_face(pred: dict, truth: dict) -> tuple[np.ndarray, np.ndarray]:
    correct = (predicted_female(np.asarray(pred["p_female"])) == (np.asarray(truth["gender"]) == 1)).astype(float)
    return correct, np.abs(np.asarray(pred["age"]) - np.asarray(truth["age"]))


def summarize(runs: list[dict], truth: dict, seeds: list[int], variants: list[str]) -> dict:
    by = {(r["variant"], r["seed"]): r for r in runs}
    out = {}
    for name in truth:
        scores = {v: [per_face(by[(v, s)]["predictions"][name], truth[name]) for s in seeds] for v in variants}
        rows = {}
        for v, per in scores.items():
            acc, mae = [float(c.mean()) for c, _ in per], [float(e.mean()) for _, e in per]
            row = {"gender_acc": {"mean": round(float(np.mean(acc)), 4), "std": round(float(np.std(acc, ddof=1)), 4)},
                   "age_mae": {"mean": round(float(np.mean(mae)), 3), "std": round(float(np.std(mae, ddof=1)), 3)}}
            if v != "baseline" and "baseline" in scores:
                base = scores["baseline"]
                row["minus_baseline"] = {
                    "gender_acc": {**paired(acc, [float(c.mean()) for c, _ in base]), "bootstrap_ci95": bootstrap_diff(
                        np.mean([c - b for (c, _), (b, _) in zip(per, base)], axis=0))},
                    "age_mae": {**paired(mae, [float(e.mean()) for _, e in base]), "bootstrap_ci95": bootstrap_diff(
                        np.mean([e - b for (_, e), (_, b) in zip(per, base)], axis=0))}}
            rows[v] = row
        out[name] = {"faces": len(truth[name]["age"]), "variants": rows}
    return out


def main(args: argparse.Namespace) -> int:
    if args.run_one:
        Path(args.to).write_text(json.dumps(run_one(args, args.run_one[0], int(args.run_one[1]))))
        return 0
    cfg = base_config(args)
    truth = labels(args, cfg)  # decodes the faces and prepares the sets once, before the parallel runs read them
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    started = time.perf_counter()
    runs = run_each(os.path.abspath(__file__), jobs, lambda job: [
        "--config", args.config, "--image-size", str(args.image_size), "--epochs", str(args.epochs),
        "--set", *args.set, *[x for o in args.ood for x in ("--ood", o)]] + (["--data", args.data] if args.data else []),
        args.jobs)
    out = {"device": device_name(resolve_device("auto")), "torch": torch.__version__, "config": args.config,
           "arch": cfg.arch, "image_size": args.image_size, "epochs": args.epochs, "seeds": args.seeds,
           "overrides": args.set, "variants": {v: VARIANTS[v] for v in args.variants}, "jobs": args.jobs,
           "wall_seconds": round(time.perf_counter() - started, 1),
           "train_seconds": {f"{r['variant']}-{r['seed']}": round(r["seconds"], 1) for r in runs},
           "sets": summarize(runs, truth, args.seeds, args.variants),
           "faces_file": args.faces_out}
    emit(out, args.out)
    if args.faces_out:  # the per-face predictions, for ood_calibration.py
        Path(args.faces_out).write_text(json.dumps({"truth": truth, "runs": [
            {k: r[k] for k in ("variant", "seed", "predictions")} for r in runs]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
