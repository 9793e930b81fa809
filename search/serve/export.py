"""Export an experiment's marked model to a self-describing folder: weights, config, preprocessing, ONNX, TorchScript.

    python search/serve/export.py --experiment runs/quick [--arch scratch|pretrained] [--format onnx,torchscript] [--out DIR]

The exported graphs take RGB images as float N×3×S×S in [0, 1] (normalisation is inside the model) and
return (age in years, P(female)), P(female) temperature-scaled. ``calibration.json`` holds the temperature and the
split-conformal age interval (``experiments.evaluation.calibration``), both fitted on the model's predictions for the
retraining's held-out test split, with their check on random halves of it. Before declaring success the ONNX graph
is run with onnxruntime, and the TorchScript module with torch, on real face crops and compared with the PyTorch
model.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from data_utils.cache import decode_file
from data_utils.dataset import SPLIT_FILE, resolve_sources
from data_utils.scan import ScanReport, list_files
from data_utils.sources import is_labels_file, join_sources, scan_sources, split_sources
from experiments.evaluation.calibration import DEFAULT_COVERAGE, SPREAD, calibrate
from experiments.exported import (
    CALIBRATION_FILE,
    CHECK_FILE,
    CONFIG_FILE,
    EXPORT_FILES,
    METRICS_FILE,
    ONNX_FILE,
    OUTPUTS,
    PREPROCESSING_FILE,
    TORCHSCRIPT_FILE,
    Exported,
    write_json,
    write_model,
)
from experiments.train import load_model
from models import ARCHS, Ensemble
from search.stages import manifest

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-3  # max abs difference allowed on age and its spread (years) and on P(female)
CHECK_IMAGES = 64


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export an experiment's best model for inference.")
    p.add_argument("--experiment", required=True, help="experiment folder (<storage-path>/<name>)")
    p.add_argument("--arch", default=None, choices=tuple(ARCHS),
                   help="which architecture's marked model (default: the one with the better test objective)")
    p.add_argument("--format", default="onnx,torchscript", help=f"comma-separated, from: {', '.join(FORMATS)}")
    p.add_argument("--single", action="store_true",
                   help="export the marked single model, not the ensemble of the top configuration's retrained seeds")
    p.add_argument("--out", default=None, help="export folder (default: <experiment>/export/<arch>)")
    p.add_argument("--data", default=None,
                   help="face crops (a folder or a labels CSV) for the ONNX check (default: the experiment's data)")
    p.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE,
                   help=f"the age interval's coverage that predict uses by default (default: {DEFAULT_COVERAGE})")
    return p


class ExportError(RuntimeError):
    """A refused export; the message names the fix."""


def marked_model(experiment: Path, arch: str | None) -> tuple[str, dict]:
    """(arch, the manifest's marked model); without ``arch``, the architecture whose marked model scored better."""
    archs = manifest.load(experiment)["archs"]
    found = {name: entry["retrain"]["best_model"] for name, entry in archs.items()
             if (entry.get("retrain") or {}).get("best_model")}
    if arch is not None:
        if arch not in found:
            raise ExportError(f"no retrained {arch} model in {experiment}; run `python search/run.py --name "
                              f"{experiment.name} --storage-path {experiment.parent} --arch {arch} --stage retrain` first")
        return arch, found[arch]
    if not found:
        raise ExportError(f"{experiment} holds no retrained model ({manifest.MANIFEST_FILE} lists none); is it an "
                          "experiment folder whose search finished?")
    best = min(found, key=lambda a: found[a]["objective"])
    return best, found[best]


def load_checkpoint(experiment: Path, arch: str, entry: dict) -> dict:
    """A retrained model's checkpoint (the marked model, or an ensemble member), found through the manifest."""
    path = manifest.locate(experiment, entry["checkpoint"])
    if path is None or not path.is_file():
        raise ExportError(f"checkpoint {path or entry['checkpoint']} of the marked {arch} model, listed in "
                          f"{experiment / manifest.MANIFEST_FILE}, is missing; rerun the retraining with `--stage "
                          "retrain` or restore the file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or corrupt: RuntimeError, EOFError or an unpickling error
        raise ExportError(f"checkpoint {path} of the marked {arch} model cannot be read ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:120] if str(err) else 'truncated?'}); rerun the retraining "
                          "with `--stage retrain` or restore the file") from None


def check_images(sources: str, image_size: int, names: list[str]) -> torch.Tensor:
    """Up to CHECK_IMAGES real crops (test-split names first) of the data sources (``data_utils.sources``: folders
    or labels CSVs), as float N×3×S×S in [0, 1]."""
    paths: list[Path] = []
    for source in split_sources(sources):
        source = Path(source)
        if is_labels_file(source):
            paths += [Path(f.path) for f in scan_sources(source)[0]]
        else:
            paths += list_files(source, ScanReport(str(source)))
    by_name = {p.name: p for p in paths}
    # dict.fromkeys keeps the order and drops the test images' second appearance in the listing
    candidates = dict.fromkeys([by_name[Path(n).name] for n in names if Path(n).name in by_name] + paths)
    images = []
    for path in candidates:
        if len(images) == CHECK_IMAGES:
            break
        tensor, _, _ = decode_file(path, image_size)
        if tensor is not None:
            images.append(tensor)
    if not images:
        raise ExportError(f"no decodable face crops in {sources} to check the export on; pass --data DIR")
    return torch.stack(images).float() / 255


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder holding anything but an earlier export of this project (which
    the new export replaces whole)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; name a folder for the export")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"--out {out}: {ancestor} is a file, not a folder; name a folder for the export")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        foreign = sorted(names - set(EXPORT_FILES))
        if foreign or (names and not {CONFIG_FILE, PREPROCESSING_FILE} <= names):  # a half export is the user's too
            shown = ", ".join(foreign[:3] or sorted(names)[:3]) + (", ..." if len(foreign or names) > 3 else "")
            raise ExportError(f"--out {out} holds files that are not an export of this project ({shown}); name an "
                              "empty or new folder")


def replace_folder(staging: Path, out: Path) -> None:
    """Put the finished export in place of ``out``, replacing an earlier export whole (no file of it stays)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def torchscript_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated; the format still works
        # the zoomed views' margins are read off the image size, which is fixed per export (preprocessing.json)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def trace(module: Exported, example: torch.Tensor) -> torch.jit.ScriptModule:
    """The model traced once: saved as TorchScript and handed to the ONNX exporter (which would trace it again)."""
    with torchscript_quiet():
        return torch.jit.trace(module, example, check_trace=False)


def export_onnx(traced: torch.jit.ScriptModule, example: torch.Tensor, path: Path) -> None:
    """The ONNX graph, batch size free, from the traced model by torch's TorchScript-based exporter: the torch.export
    one takes minutes on these graphs on a CPU. onnxruntime folds the constants when it loads the graph, so the
    exporter does not; the parity check after export compares the graph with PyTorch."""
    with warnings.catch_warnings():  # the exporter's notices that a newer one exists; the format is the same ONNX
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(traced, (example,), str(path), input_names=["image"], output_names=list(OUTPUTS),
                          dynamic_axes={name: {0: "batch"} for name in ("image", *OUTPUTS)},
                          opset_version=18, dynamo=False, verbose=False, do_constant_folding=False)


def max_diffs(reference: tuple[np.ndarray, ...], other: tuple[np.ndarray, ...]) -> dict[str, float]:
    return {name: float(np.abs(r - o).max()) for name, r, o in zip(OUTPUTS, reference, other)}


def main(args: argparse.Namespace) -> int:
    try:
        plan = plan_export(args)
    except (ExportError, manifest.ManifestError, FileNotFoundError, NotADirectoryError, PermissionError,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = plan["out"]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    work.mkdir()
    try:
        checks = write_export(work, **{k: v for k, v in plan.items() if k != "out"}, coverage=args.coverage)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    replace_folder(work, out)
    print(json.dumps({"export": str(out), "arch": plan["arch"], **checks}, indent=2))
    if not checks["passed"]:
        failed = [k for k, v in checks.items() if k.endswith("_diff") and max(v.values()) >= TOLERANCE]
        print(f"error: {', '.join(failed)} reached the tolerance {TOLERANCE}; the export is not faithful",
              file=sys.stderr)
        return 1
    return 0


def plan_export(args: argparse.Namespace) -> dict:
    """Everything the export needs, checked before anything is written: the model (the ensemble unless
    ``--single``), its test predictions (the calibration's), the crops for the parity check and the folder."""
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    experiment = Path(args.experiment).expanduser().resolve()
    if unknown:
        raise ExportError(f"unknown format(s) {', '.join(unknown)}; valid: {', '.join(FORMATS)}")
    if not 0 < args.coverage < 1:
        raise ExportError(f"--coverage {args.coverage}: give a level between 0 and 1, e.g. 0.9")
    if not experiment.is_dir():
        raise ExportError(f"experiment folder {experiment} does not exist")
    arch, entry = marked_model(experiment, args.arch)
    out = Path(args.out or experiment / "export" / arch).expanduser().resolve()
    check_out_folder(out)
    retrain = manifest.require(experiment, arch, "retrain")
    ensemble = None if args.single else retrain.get("ensemble")
    if ensemble:
        members = [load_model(load_checkpoint(experiment, arch, m), "cpu") for m in ensemble["members"]]
        model, cfg = Ensemble([m for m, _ in members]).eval(), members[0][1]
    else:
        model, cfg = load_model(load_checkpoint(experiment, arch, entry), "cpu")
    run = next((r for r in retrain["runs"] if r["trial_id"] == entry["trial_id"]), {})
    predictions = manifest.locate(experiment, (ensemble or run).get("predictions"))
    if predictions is None or not predictions.is_file():
        raise ExportError(f"the test predictions {predictions or ''} of the {arch} model, listed in "
                          f"{experiment / manifest.MANIFEST_FILE}, are missing; rerun the retraining with "
                          "`--stage retrain`")
    held_out = pd.read_csv(predictions)
    sources = join_sources(resolve_sources(args.data or cfg.data_dir))
    images = check_images(sources, cfg.image_size, held_out["name"].tolist())
    return {"out": out, "model": model, "cfg": cfg, "ensemble": ensemble, "entry": entry, "held_out": held_out,
            "images": images, "formats": formats, "arch": arch, "split_file": experiment / SPLIT_FILE}


def write_export(out: Path, model, cfg, ensemble: dict | None, entry: dict, held_out: pd.DataFrame,
                 images: torch.Tensor, formats: list[str], coverage: float, arch: str, split_file: Path) -> dict:
    """Write every file of the export into ``out`` and check each graph against the PyTorch model; returns the
    checks (export_check.json)."""
    write_model(out, model, cfg)
    source = ensemble or entry
    metrics = {k: source[k] for k in ("test_gender_acc", "test_age_mae", "objective")}
    metrics.update(arch=arch, selection=source["selection"], split=str(split_file))
    metrics.update({"members": ensemble["members"]} if ensemble else {"trial_id": entry["trial_id"], "seed": entry["seed"]})
    write_json(out / METRICS_FILE, metrics)
    calibration = calibrate(held_out["age"], held_out["pred_age"], held_out["gender"] == 1, held_out["p_female"],
                            coverage, spread=held_out.get(SPREAD))
    calibration["calibrated_on"] = (f"the {len(held_out)} faces of the retraining's test split ({split_file}), "
                                    "which the exported model never trained on")
    write_json(out / CALIBRATION_FILE, calibration)
    checks = {"images": int(images.shape[0]), "tolerance": TOLERANCE}
    checks.update(write_graphs(out, model, calibration["temperature"], images, formats))
    failed = [k for k, v in checks.items() if k.endswith("_diff") and max(v.values()) >= TOLERANCE]
    checks["passed"] = not failed
    write_json(out / CHECK_FILE, checks)
    return checks


@torch.no_grad()
def write_graphs(out: Path, model, temperature: float, images: torch.Tensor, formats: list[str]) -> dict[str, dict]:
    """The ONNX and TorchScript files ``formats`` names, each run on ``images`` as a user loads it and compared
    with the PyTorch model as predict runs it (one forward per view): the largest difference per output. The graphs
    run the views as one batch, which traces one copy of each network instead of one per view."""
    reference = tuple(t.numpy() for t in Exported(model, temperature).eval()(images))
    traced = trace(Exported(model, temperature, batched_views=True).eval(), images[:2])
    checks = {}
    if "torchscript" in formats:  # saved before the ONNX exporter runs its passes over the traced graph
        with torchscript_quiet():
            traced.save(str(out / TORCHSCRIPT_FILE))
            loaded = torch.jit.load(str(out / TORCHSCRIPT_FILE))
        with torch.jit.optimized_execution(False):  # one run: the executor's optimising passes would not pay
            checks["torchscript_max_abs_diff"] = max_diffs(reference, tuple(t.numpy() for t in loaded(images)))
    if "onnx" in formats:
        import onnxruntime as ort

        export_onnx(traced, images[:2], out / ONNX_FILE)
        session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
        checks["onnx_max_abs_diff"] = max_diffs(reference, tuple(session.run(None, {"image": images.numpy()})))
    return checks


def cli() -> int:
    """The ``facetune-export`` entry point."""
    return main(get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(cli())
