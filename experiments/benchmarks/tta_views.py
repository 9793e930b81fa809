"""Which test-time views pay? Trained models scored on their validation split with each ``tta_zoom``; JSON.

    python experiments/benchmarks/tta_views.py --split runs/b30/split.json \
        --checkpoints runs/b30/pretrained/*/checkpoint_*/checkpoint.pt --zoom 0 0.05 0.1 0.15

Test-time augmentation costs no training, so it is measured on models that already exist, such as a search's
trials: of the checkpoints given, each configuration's last one counts if it ran the configuration's full epochs,
and is scored on the validation split of ``split.json`` (a search's trials trained on the train split only; the
test split is not read).
Each face is scored with its mirror as configured (``tta_flip``) and, for ``tta_zoom`` > 0, zoomed in and out by
that fraction (``models.views.zoom_views``). Each zoom is compared with the first one given (the baseline),
paired by model: the mean difference with a 95% t-interval over models, and a 95% bootstrap interval over
validation faces (the models' differences averaged per face, faces resampled). Identical models (CPU training is
deterministic, so a configuration tried twice trains the same weights) are counted once.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from data_utils.dataset import Split, load_faces
from experiments.benchmarks.ablation import bootstrap_diff, per_image
from experiments.benchmarks.parallel import emit
from experiments.benchmarks.precision_quality import paired
from experiments.device import device_name
from experiments.objective import objective
from experiments.train import load_model, predict


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Validation scores of trained models under each tta_zoom.")
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint.pt files (e.g. a search's trials)")
    p.add_argument("--split", required=True, help="the split.json the models were trained with")
    p.add_argument("--zoom", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15],
                   help="tta_zoom values; the first is the baseline")
    p.add_argument("--data", default=None, help="UTKFace folder (default: the one the models trained on)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p


def full_runs(paths: list[str]) -> list[tuple[str, dict]]:
    """(path, checkpoint) of each configuration's last checkpoint among ``paths``, where it ran its full epochs,
    one per distinct set of weights (CPU training is deterministic: a configuration tried twice trains the same)."""
    last: dict[str, tuple[str, dict]] = {}
    for path in paths:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        key = json.dumps({k: v for k, v in ckpt["config"].items() if k != "epochs"}, sort_keys=True)
        if key not in last or ckpt["epoch"] > last[key][1]["epoch"]:
            last[key] = (path, ckpt)
    found, seen = [], set()
    for path, ckpt in last.values():
        digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in ckpt["model"].values())).hexdigest()
        if ckpt["epoch"] == ckpt["config"]["epochs"] and digest not in seen:
            seen.add(digest)
            found.append((path, ckpt))
    return found


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = full_runs(args.checkpoints)
    if len(checkpoints) < 2:
        print(f"error: {len(checkpoints)} distinct model(s) that ran their full epochs among the "
              f"{len(args.checkpoints)} checkpoint(s) given; a paired comparison needs 2 or more", file=sys.stderr)
        return 2
    faces_by_size, rows = {}, []
    per_face: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {z: [] for z in args.zoom}
    for path, ckpt in checkpoints:
        model, cfg = load_model(ckpt)
        if cfg.image_size not in faces_by_size:
            faces = load_faces(args.data or cfg.data_dir, cfg.image_size, cfg.cache_dir)
            faces_by_size[cfg.image_size] = faces.view(Split.load(args.split, faces).val)
        val = faces_by_size[cfg.image_size]
        age, gender = val.ages.numpy().astype(float), val.genders.numpy()
        row = {"checkpoint": str(path), "arch": cfg.arch, "image_size": cfg.image_size, "epochs": cfg.epochs,
               "tta_flip": cfg.tta_flip}
        for zoom in args.zoom:
            model.tta_zoom = zoom
            pred_age, p_female = predict(model, val.pixels())
            correct, abs_err = per_image({"age": pred_age.numpy(), "p_female": p_female.numpy()}, age, gender)
            per_face[zoom].append((correct, abs_err))
            row[f"zoom_{zoom:g}"] = {"val_gender_acc": round(float(correct.mean()), 4),
                                     "val_age_mae": round(float(abs_err.mean()), 3),
                                     "objective": round(objective(float(correct.mean()), float(abs_err.mean())), 4)}
        rows.append(row)
    base = args.zoom[0]
    compared = {}
    for zoom in args.zoom[1:]:
        acc = [c.mean() for c, _ in per_face[zoom]], [c.mean() for c, _ in per_face[base]]
        mae = [e.mean() for _, e in per_face[zoom]], [e.mean() for _, e in per_face[base]]
        face_acc = np.mean([c - cb for (c, _), (cb, _) in zip(per_face[zoom], per_face[base])], axis=0)
        face_mae = np.mean([e - eb for (_, e), (_, eb) in zip(per_face[zoom], per_face[base])], axis=0)
        compared[f"zoom_{zoom:g}"] = {
            "delta_val_gender_acc": {**paired(*acc), "bootstrap95": bootstrap_diff(face_acc)},
            "delta_val_age_mae": {**paired(*mae), "bootstrap95": bootstrap_diff(face_mae)},
            "models_better_acc": int(sum(a > b for a, b in zip(*acc))),
            "models_better_mae": int(sum(a < b for a, b in zip(*mae)))}
    emit({"device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
          "split": str(Path(args.split).resolve()), "models": len(rows), "baseline": f"zoom_{base:g}",
          "validation_faces": len(next(iter(faces_by_size.values()))), "trials": rows, "against_baseline": compared},
         args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
