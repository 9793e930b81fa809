"""Out-of-domain scoring: the retrained models and the exported one on labelled sets from outside the training data.

Each set (a folder or a labels CSV, ``data_utils.sources``) is read the way ``search/serve/predict.py`` reads it: crops as
they are when most files have UTKFace names, else each photo's face detected and aligned (the most confident face:
the one the label is about). Every completed retraining run is scored, and the model ``search/serve/export.py`` exports
by default (the ensemble of the top configuration's seeds, else the marked model) with the calibration the export
fits: temperature and split-conformal interval (scaled by each face's spread) from the retraining's test
predictions. Nothing here feeds a
choice: it runs after the retraining has marked its model, and only the report reads ``ood/ood.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from data_utils.labelled import LabelledSet, read_set, set_names
from data_utils.photos import DEFAULT_DETECTOR, are_crops, check_detector
from data_utils.sources import scan_sources, split_sources
from experiments.evaluation.calibration import (
    DEFAULT_COVERAGE,
    SPREAD,
    age_interval,
    apply_temperature,
    calibrate,
    halfwidths,
)
from experiments.evaluation.scoring import labelled_frame, score
from experiments.train import load_model
from models.views import mean_probability_logit
from search.files import write_json
from search.stages import manifest

OOD_DIR = "ood"
RESULTS_FILE = "ood.json"
BATCH = 64


@torch.no_grad()
def member_outputs(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(age, gender logit, spread of the views' ages) of every face, in batches of ``BATCH``."""
    parts = [model.forward_with_spread(images[start:start + BATCH].float() / 255)
             for start in range(0, len(images), BATCH)]
    return tuple(torch.cat([p[i].float() for p in parts]) for i in range(3))


def scored(labelled: LabelledSet, outputs: tuple[torch.Tensor, ...], test: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """The scores (``experiments.evaluation.scoring.score``) and per-face table of one model's outputs on a set, with the
    calibration the export fits on the model's test predictions (temperature, the interval scaled by the spread)."""
    age, logit, spread = (t.numpy() for t in outputs)
    calibration = calibrate(test["age"], test["pred_age"], test["gender"] == 1, test["p_female"], DEFAULT_COVERAGE,
                            splits=0, spread=test.get(SPREAD))
    p_female = apply_temperature(torch.sigmoid(torch.from_numpy(logit)).numpy(), calibration["temperature"])
    low, high = age_interval(age, halfwidths(calibration, DEFAULT_COVERAGE, spread))
    ranges = [f.age_range or (f.age, f.age) for f in labelled.files]
    frame = labelled_frame([f.name for f in labelled.files], [f.gender for f in labelled.files],
                           [r[0] for r in ranges], [r[1] for r in ranges], age, p_female, low, high,
                           [f.group for f in labelled.files])
    frame[SPREAD] = spread
    return score(frame), frame


def models_of(root: Path, arch: str) -> tuple[list[dict], dict | None]:
    """(completed retraining runs with their test predictions, the exported model's members or None)."""
    retrain = manifest.require(root, arch, "retrain")
    runs = [r for r in retrain["runs"] if r.get("checkpoint") and r.get("predictions")]
    ensemble = retrain.get("ensemble")
    best = retrain.get("best_model")
    if ensemble:
        exported = {"what": f"exported: ensemble of {len(ensemble['members'])} seeds",
                    "trial_ids": [m["trial_id"] for m in ensemble["members"]], "predictions": ensemble["predictions"]}
    elif best:
        exported = {"what": "exported: the marked model", "trial_ids": [best["trial_id"]],
                    "predictions": next((r["predictions"] for r in runs if r["trial_id"] == best["trial_id"]), None)}
    else:
        exported = None
    return runs, exported


def score_arch(root: Path, arch: str, sets: list[LabelledSet]) -> list[dict[str, Any]]:
    """Every completed run of ``arch``'s retraining and its exported model, on every set."""
    runs, exported = models_of(root, arch)
    out_dir = root / OOD_DIR
    rows = []
    outputs: dict[str, dict[str, tuple[torch.Tensor, ...]]] = {s.name: {} for s in sets}
    for run in runs:
        model, _ = load_model(torch.load(manifest.locate(root, run["checkpoint"]), map_location="cpu",
                                         weights_only=True), "cpu")
        test = pd.read_csv(manifest.locate(root, run["predictions"]))
        for labelled in sets:
            outputs[labelled.name][run["trial_id"]] = member_outputs(model, labelled.images)
            result, _ = scored(labelled, outputs[labelled.name][run["trial_id"]], test)
            rows.append({"arch": arch, "set": labelled.name, "model": f"rank {run['rank'] + 1}, seed {run['seed']}",
                         "exported": False, **result})
    if exported and exported["predictions"]:
        test = pd.read_csv(manifest.locate(root, exported["predictions"]))
        for labelled in sets:
            members = [outputs[labelled.name][t] for t in exported["trial_ids"] if t in outputs[labelled.name]]
            if not members:
                continue
            ensemble = (torch.stack([m[0] for m in members]).mean(0), mean_probability_logit(torch.stack(
                [m[1] for m in members])), torch.stack([m[2] for m in members]).mean(0))  # as models.Ensemble
            result, frame = scored(labelled, ensemble, test)
            frame.to_csv(out_dir / f"{arch}-{labelled.name}.csv", index=False)
            rows.append({"arch": arch, "set": labelled.name, "model": exported["what"], "exported": True, **result})
    return rows


def check_sets(sources: str, detector: str = DEFAULT_DETECTOR) -> None:
    """Refuse, before any training, a set with no usable labelled face, or photos without the detector installed."""
    for source in split_sources(sources):
        files, report = scan_sources(source)
        if not files:
            found = ", ".join(f"{n} {r}" for r, n in sorted(report.skipped.items())) or "nothing"
            raise ValueError(f"--ood {source}: no usable labelled face ({report.files_seen} entries: {found}); pass "
                             "a folder of UTKFace-named crops or a labels CSV with file, age and gender")
        if not are_crops([f.path for f in files]):
            check_detector(detector)


def run_ood(root: Path, sources: str, image_sizes: dict[str, int], detector: str = DEFAULT_DETECTOR,
            cache_dir: str | None = None) -> Path:
    """Score each architecture's retrained and exported models on every set of ``sources``; writes
    ``ood/ood.json`` (and each exported model's per-face table) and records it in the manifest."""
    listed = split_sources(sources)
    (root / OOD_DIR).mkdir(parents=True, exist_ok=True)
    sets_by_size: dict[int, list[LabelledSet]] = {}
    results: dict[str, Any] = {"sets": [], "rows": []}
    retrained = [a for a in image_sizes if (manifest.load(root)["archs"].get(a) or {}).get("retrain")]
    image_sizes = {a: image_sizes[a] for a in retrained}
    for arch, size in image_sizes.items():
        if size not in sets_by_size:
            sets_by_size[size] = [read_set(n, s, size, detector, cache_dir) for n, s in zip(set_names(listed), listed)]
        results["rows"] += score_arch(root, arch, sets_by_size[size])
    for labelled in next(iter(sets_by_size.values()), []):
        results["sets"].append({"name": labelled.name, "source": labelled.source, "listed": labelled.listed,
                                "scored": len(labelled.files), "read_as": "photos: detected and aligned"
                                if labelled.detected else "crops", "skipped": dict(labelled.skipped)})
    path = root / OOD_DIR / RESULTS_FILE
    write_json(path, results)
    for arch in image_sizes:
        manifest.record(root, arch, "ood", {"results": manifest.relative(root, path)})
    return path


def load_results(root: Path) -> dict[str, Any] | None:
    path = root / OOD_DIR / RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def headline_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (architecture, set, model): the figures with their bootstrap intervals, as text."""
    def cell(v: dict | None, scale: float = 1.0, digits: int = 2) -> str:
        if not v:
            return "—"
        return f"{v['value'] * scale:.{digits}f} ({v['low'] * scale:.{digits}f}–{v['high'] * scale:.{digits}f})"

    rows = []
    for r in results["rows"]:
        rows.append({"architecture": r["arch"], "set": r["set"], "model": r["model"], "faces": r["n"],
                     "gender accuracy (%)": cell(r["gender_acc"], 100, 1), "age MAE (years)": cell(r["age_mae"]),
                     "age range hit (%)": cell(r.get("range_hit"), 100, 1),
                     f"{DEFAULT_COVERAGE:.0%} interval coverage (%)": cell(r.get("interval_coverage"), 100, 1)})
    return rows


def group_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The exported models' per-group figures on each set (race or the labels file's group column)."""
    rows = []
    for r in results["rows"]:
        if not r["exported"]:
            continue
        for g in r["groups"]["race"]["table"]:
            rows.append({"architecture": r["arch"], "set": r["set"], "group": g["race"], "faces": g["faces"],
                         "gender accuracy (%)": f"{g['gender_acc']:.1%} ({g['acc_low']:.1%}–{g['acc_high']:.1%})",
                         "age error (years)": f"{g['age_mae']:.2f} ({g['mae_low']:.2f}–{g['mae_high']:.2f})"})
    return rows
