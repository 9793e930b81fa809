"""Predict age and gender for faces with an exported model; on the CPU, without Ray.

    python search/serve/predict.py --model runs/quick/export/pretrained group_photo.jpg --annotate annotated/
    python search/serve/predict.py --model EXPORT_DIR --data DIR [--out predictions.csv|.json] [--evaluate]

Two ways to read an image:
- crops (the default for UTKFace-named folders and ``--evaluate``; ``--crops`` forces it): each image is one face,
  prepared exactly as in training (``data_utils.cache.decode_face``);
- detection (the default otherwise; ``--detect`` forces it): faces are found in photos of any size and aligned to
  UTKFace's crop geometry (``data_utils.photos``), one row per face with its box and landmarks.
Each row has the age, its interval (``age_low``..``age_high``, split-conformal at the export's coverage or
``--coverage``) and a calibrated P(female). A file that cannot be read, or a photo with no face, is reported and
counted; the exit code is non-zero only when nothing was predicted. With ``--evaluate`` the folder's UTKFace names
give the true labels, under the training's parsing, skipping and de-duplication rules, and a JSON line with n,
gender accuracy, age MAE, the intervals' empirical coverage and width, and the figures per race group and per
gender × race group (bootstrap intervals) is printed.
"""
import argparse
import csv
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from data_utils.cache import DecodeError, decode_file, decode_workers
from data_utils.photos import (
    DEFAULT_DETECTOR,
    DETECTORS,
    are_crops,
    check_detector,
    has_utkface_name,
    photo_faces,
    subject_face,
)
from data_utils.scan import FaceFile, ScanReport, list_files
from data_utils.sources import is_labels_file, scan_sources
from experiments.evaluation.calibration import age_interval, halfwidths
from experiments.evaluation.scoring import labelled_frame, score
from experiments.exported import CALIBRATION_FILE, Exported, ExportFolderError, load_calibration, load_export
from experiments.objective import predicted_female

OUTPUT_FORMATS = (".csv", ".json")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict age and gender for faces with an exported model.")
    p.add_argument("--model", required=True, help="export folder written by search/serve/export.py")
    p.add_argument("images", nargs="*", help="image files to predict")
    p.add_argument("--data", default=None, action="append",
                   help="a folder of images, or a labels CSV, to predict (instead of listing files); repeatable")
    p.add_argument("--out", default="predictions.csv",
                   help="predictions, one row per face: .csv or .json (default: predictions.csv)")
    p.add_argument("--evaluate", action="store_true",
                   help="with --data of UTKFace-named files or labels CSVs: print JSON with n, gender accuracy, age "
                        "MAE (or range hit for age ranges), the intervals' coverage and the figures per group")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--detect", action="store_true",
                      help="find and align the faces in each image (default unless the images have UTKFace names)")
    mode.add_argument("--crops", action="store_true",
                      help="each image is one face crop (default for UTKFace-named images and --evaluate)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, choices=tuple(DETECTORS),
                   help=f"face detector for --detect (default: {DEFAULT_DETECTOR})")
    p.add_argument("--annotate", default=None, metavar="DIR",
                   help="write each image to DIR with its faces' boxes, ages and genders drawn")
    p.add_argument("--coverage", type=float, default=None,
                   help="coverage of the age interval, e.g. 0.8 (default: the export's, see its calibration.json)")
    p.add_argument("--batch-size", type=int, default=64, help="faces per forward pass (default: 64)")
    return p


@torch.no_grad()
def predict_files(model: torch.nn.Module, paths: list[Path], size: int, batch_size: int = 64):
    """Crops: yield (path, age, p_female, spread) for each decodable file and (path, None, reason, None) for the
    others, in order. ``model`` returns (age, P(female), age spread) (``experiments.exported.Exported``)."""
    with ThreadPoolExecutor(decode_workers()) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            decoded = [(tensor, reason) for tensor, _, reason in pool.map(lambda p: decode_file(p, size), chunk)]
            good = [i for i, (t, _) in enumerate(decoded) if t is not None]
            results = {}
            if good:
                x = torch.stack([decoded[i][0] for i in good]).float() / 255
                age, prob, spread = model(x)
                results = dict(zip(good, zip(age.tolist(), prob.tolist(), spread.tolist())))
            for i, path in enumerate(chunk):
                if i in results:
                    yield path, *results[i]
                else:
                    yield path, None, decoded[i][1], None


@torch.no_grad()
def predict_photos(model: torch.nn.Module, paths: list[Path], size: int, detector: str, batch_size: int = 64):
    """Detection: yield (path, faces, ages, p_females, spreads) for each photo with a face, (path, None, reason,
    None, None) for the others (unreadable, or no face found), in order."""
    pending: list[tuple[Path, list, list]] = []

    def flush():
        tensors = [t for _, _, ts in pending for t in ts]
        ages, probs, spreads = [], [], []
        for start in range(0, len(tensors), batch_size):
            age, prob, spread = model(torch.stack(tensors[start:start + batch_size]).float() / 255)
            ages += age.tolist()
            probs += prob.tolist()
            spreads += spread.tolist()
        at = 0
        for path, faces, ts in pending:
            yield path, faces, ages[at:at + len(ts)], probs[at:at + len(ts)], spreads[at:at + len(ts)]
            at += len(ts)
        pending.clear()

    for path in paths:
        try:
            faces, tensors = photo_faces(path, size, detector)
        except DecodeError as err:
            yield from flush()
            yield path, None, err.reason, None, None
            continue
        if not faces:
            yield from flush()
            yield path, None, "no_face_found", None, None
            continue
        pending.append((path, faces, tensors))
        if sum(len(ts) for _, _, ts in pending) >= batch_size:
            yield from flush()
    yield from flush()


def annotation_targets(paths: list[Path], out_dir: Path) -> dict[Path, Path]:
    """Where each input's annotated copy goes: its own name, extension kept, in ``out_dir``. An extension PIL cannot
    write gets ``.png`` added; a name two inputs share gets ``-2``, ``-3``, ... before its extension."""
    from PIL import Image

    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    taken, targets = set(), {}
    for path in paths:
        name = path.name if path.suffix.lower() in writable else f"{path.name}.png"
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        taken.add(candidate.lower())
        targets[path] = out_dir / candidate
    return targets


def annotate(path: Path, rows: list[dict], target: Path) -> None:
    """``path`` with each face's box and label drawn, saved as ``target`` (its format from the extension). The photo
    is read again rather than kept from detection: photos up to data_utils.cache.MAX_PIXELS would otherwise be held
    for a whole batch of faces."""
    from PIL import ImageDraw

    from data_utils.photos import read_photo

    img = read_photo(path)
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 400))
    for row in rows:
        x, y, w, h = (row.get(k, d) for k, d in (("box_x", 0), ("box_y", 0), ("box_w", img.width), ("box_h", img.height)))
        colour = (230, 60, 140) if row["gender"] == "female" else (40, 120, 230)
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=width)
        label = (f"{row['gender']} {max(row['p_female'], 1 - row['p_female']):.0%}, {row['age']:.0f}"
                 + (f" ({row['age_low']:.0f}-{row['age_high']:.0f})" if row.get("age_low") is not None else ""))
        size = max(12, round(min(w, img.width / 3) / 9))
        left, upper, right, lower = draw.textbbox((0, 0), label, font_size=size)
        top = max(0, y - (lower - upper) - 2 * width)
        draw.rectangle((x, top, x + (right - left) + 2 * width, top + (lower - upper) + 2 * width), fill=colour)
        draw.text((x + width, top + width - upper), label, fill=(255, 255, 255), font_size=size)
    target.parent.mkdir(parents=True, exist_ok=True)
    img.save(target, **({"quality": 90} if target.suffix.lower() in (".jpg", ".jpeg") else {}))


def write_rows(rows: list[dict], out: Path) -> None:
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=1) + "\n")
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def evaluation(rows: list[dict], skipped: Counter, coverage: float | None) -> dict:
    """The ``--evaluate`` JSON: overall (``experiments.evaluation.scoring``, bootstrap intervals in ``intervals``), the age
    intervals' coverage, and per group. Rows of faces given an age range count as range hits, not in the MAE."""
    with_interval = coverage is not None and all(r.get("age_high") is not None for r in rows)
    frame = labelled_frame([Path(r["file"]).name for r in rows], [r["true_gender"] for r in rows],
                           [r["true_age_low"] for r in rows], [r["true_age_high"] for r in rows],
                           [r["age"] for r in rows], [r["p_female"] for r in rows],
                           [r["age_low"] for r in rows] if with_interval else None,
                           [r["age_high"] for r in rows] if with_interval else None,
                           [r.get("true_group") for r in rows])
    scores = score(frame)
    out = {"n": scores["n"], "gender_acc": scores["gender_acc"]["value"],
           "age_mae": scores["age_mae"]["value"] if scores["age_mae"] else None}
    if scores.get("range_hit"):
        out.update(range_hit=scores["range_hit"]["value"], range_distance=scores["range_distance"]["value"])
    if with_interval:
        out["age_interval"] = {"nominal_coverage": coverage, "coverage": scores["interval_coverage"]["value"],
                               "mean_width": scores["interval_width"]}
    out["intervals"] = {k: scores[k] for k in ("gender_acc", "age_mae", "range_hit", "range_distance",
                                                "interval_coverage") if scores.get(k)}
    out["groups"] = scores["groups"]
    out["skipped"] = dict(sorted(skipped.items()))
    return out


def empty_folder_message(folder: Path, report: ScanReport, evaluate: bool) -> str:
    """Why a folder gave nothing to predict, with what it holds."""
    if not report.files_seen:
        return f"no images to predict: the folder is empty ({folder})"
    found = ", ".join(f"{n} {r}" for r, n in sorted(report.skipped.items()))
    if evaluate:
        return (f"no images to evaluate in {folder}: {report.files_seen} entries, none usable ({found}); --evaluate "
                "needs UTKFace names (age_gender_race_datetime.jpg.chip.jpg): drop --evaluate to only predict them")
    return f"no images to predict in {folder}: {report.files_seen} entries, no regular file ({found})"


def data_inputs(sources: list[str], evaluate: bool, skipped: Counter) -> tuple[list[Path], dict[Path, FaceFile]]:
    """The images ``--data`` names (folders, labels CSVs) and, with ``--evaluate``, their labels: the training's
    parsing, skipping and de-duplication rules (``data_utils.sources``). Skips are added to ``skipped``."""
    if evaluate:
        files, report = scan_sources(sources)
        dropped = report.duplicate_copies_dropped + report.conflicting_files_dropped
        if dropped:
            report.skipped["duplicate_or_conflicting"] += dropped
        skipped.update(report.skipped)
        if not files:
            raise ValueError(empty_folder_message(Path(report.folder), report, evaluate))
        return [Path(f.path) for f in files], {Path(f.path): f for f in files}
    paths = []
    for source in sources:
        path = Path(source).expanduser().resolve()
        if is_labels_file(path):
            files, report = scan_sources(path)
            found = [Path(f.path) for f in files]
        elif path.is_dir():
            report = ScanReport(str(path))
            found = list_files(path, report)  # links that loop or lead nowhere are counted, not dropped
        else:
            raise ValueError(f"--data {path} is neither a folder nor a labels CSV")
        skipped.update(report.skipped)
        if not found:
            raise ValueError(empty_folder_message(path, report, evaluate))
        paths += found
    return paths, {}


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, a numeric flag out of range and an output path that cannot be written."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: give 1 or more faces per forward pass")
    out = Path(args.out).expanduser()
    if Path(args.out).suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"--out {args.out}: name a {' or '.join(OUTPUT_FORMATS)} file")
    if out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; name a {' or '.join(OUTPUT_FORMATS)} file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--out {args.out}: the folder {parent} does not exist; create it or name a file elsewhere")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {args.out}: the folder {parent} is not writable; name a file elsewhere")
    if args.annotate and Path(args.annotate).expanduser().exists() and not Path(args.annotate).expanduser().is_dir():
        raise ValueError(f"--annotate {args.annotate} is a file; name a folder for the annotated copies "
                         "(it is created if missing)")


def check_annotate_folder(folder: Path, paths: list[Path]) -> None:
    """Refuse an ``--annotate`` folder that holds any input image: its annotated copy would replace the original."""
    inside = [p for p in paths if p.expanduser().resolve().parent == folder.expanduser().resolve()]
    if inside:
        raise ValueError(f"--annotate {folder} holds {len(inside)} of the input images (e.g. {inside[0].name}), "
                         "which their annotated copies would overwrite; name another folder")


def main(args: argparse.Namespace) -> int:
    try:
        model, cfg, calibration = read_model(args)
        paths, labels, skipped = read_inputs(args)
        detect = args.detect or not (args.crops or are_crops(paths))
        if detect:
            check_detector(args.detector)
    except (ExportFolderError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    named = sum(has_utkface_name(p) for p in paths)
    print(f"faces: {'detected and aligned' if detect else 'each image is a crop'} ({named} of {len(paths)} image(s) "
          f"have UTKFace names; {'--crops' if detect else '--detect'} for the other way)", file=sys.stderr)
    if calibration is None:
        print(f"note: {args.model} has no {CALIBRATION_FILE} (an older export): no age interval, P(female) as the "
              "model gives it; export the model again for both", file=sys.stderr)
    exported = Exported(model, calibration["temperature"] if calibration else 1.0).eval()
    coverage = args.coverage or (calibration or {}).get("coverage")
    row = RowMaker(calibration, coverage, labels)
    if detect:
        by_file = detected_rows(exported, paths, cfg.image_size, args, row, skipped)
    else:
        by_file = crop_rows(exported, paths, cfg.image_size, args, row, skipped)
    rows = [r for found in by_file.values() for r in found]
    drawn = annotate_all(by_file, paths, args.annotate) if args.annotate else 0
    if rows:
        write_rows(rows, Path(args.out))
    what = f"{len(rows)} face(s) in {len(by_file)} image(s)" if detect else f"{len(rows)} image(s)"
    print(f"predicted {what}, skipped {sum(skipped.values())}"
          + (f" ({', '.join(f'{n} {r}' for r, n in sorted(skipped.items()))})" if skipped else "")
          + (f" → {args.out}" if rows else "") + (f"; {drawn} drawn in {args.annotate}" if rows and args.annotate else ""),
          file=sys.stderr)
    labelled = [r for r in rows if "true_gender" in r]
    if args.evaluate and labelled:
        print(json.dumps(evaluation(labelled, skipped, coverage if calibration is not None else None)))
    return 0 if rows else 1


def read_model(args: argparse.Namespace):
    """(model, config, calibration or None) of ``--model``, after checking ``--out``."""
    check_outputs(args)
    model, cfg = load_export(args.model)
    return model, cfg, load_calibration(args.model)


def read_inputs(args: argparse.Namespace) -> tuple[list[Path], dict, Counter]:
    """The images to predict, their labels (``--data``) and the count of what was skipped reading them."""
    if args.data and args.images:
        raise ValueError("give image files or --data DIR, not both")
    if args.evaluate and not args.data:
        raise ValueError("--evaluate needs --data DIR with UTKFace-named files, or --data LABELS.csv")
    if args.coverage is not None and not 0 < args.coverage < 1:
        raise ValueError(f"--coverage {args.coverage}: give a level between 0 and 1, e.g. 0.9")
    labels, skipped = {}, Counter()
    if args.data:
        paths, labels = data_inputs(args.data, args.evaluate, skipped)
    else:
        paths = [Path(p).expanduser() for p in args.images]
        if not paths:
            raise ValueError("no images given: list image files or pass --data DIR")
    if args.annotate:
        check_annotate_folder(Path(args.annotate), paths)
    return paths, labels, skipped


class RowMaker:
    """One output row per face: the prediction, its age interval (where the export has a calibration) and, for a
    labelled file's subject, the true labels."""

    def __init__(self, calibration: dict | None, coverage: float | None, labels: dict):
        self.calibration, self.coverage, self.labels = calibration, coverage, labels

    def __call__(self, path: Path, age: float, p_female: float, spread: float, extra: dict) -> dict:
        if self.calibration is not None:
            low, high = age_interval(np.array([age]), halfwidths(self.calibration, self.coverage, np.array([spread])))
        else:
            low, high = [None], [None]
        row = {"file": str(path), **extra, "age": age, "age_spread": spread,
               "age_low": None if low[0] is None else float(low[0]),
               "age_high": None if high[0] is None or not np.isfinite(high[0]) else float(high[0]),
               "p_female": p_female, "gender": "female" if predicted_female(p_female) else "male"}
        if path in self.labels and extra.get("subject", True):
            f = self.labels[path]
            low, high = f.age_range or (f.age, f.age)
            row.update(true_age=f.age if f.age_range is None else None, true_age_low=low, true_age_high=high,
                       true_gender=f.gender, **({"true_group": f.group} if f.group else {}))
        row.pop("subject", None)
        return row


def detected_rows(model, paths: list[Path], size: int, args, row: RowMaker, skipped: Counter) -> dict[Path, list[dict]]:
    """Rows of every face found in each photo (its box, landmarks and detection score with the prediction)."""
    by_file: dict[Path, list[dict]] = {}
    for path, faces, ages, probs, spreads in predict_photos(model, paths, size, args.detector, args.batch_size):
        if faces is None:
            skipped[ages] += 1
            print(f"skipped {path}: {ages}", file=sys.stderr)
            continue
        subject = subject_face(faces)  # the face a labelled photo's label is about
        for i, (face, age, p_female, spread) in enumerate(zip(faces, ages, probs, spreads)):
            x, y, w, h = (round(v, 1) for v in face.box)
            marks = " ".join(f"{v:.1f}" for v in face.landmarks.ravel())
            by_file.setdefault(path, []).append(row(path, age, p_female, spread, {
                "face": i, "box_x": x, "box_y": y, "box_w": w, "box_h": h, "landmarks": marks,
                "detection_score": round(face.score, 4), "subject": i == subject}))
    return by_file


def crop_rows(model, paths: list[Path], size: int, args, row: RowMaker, skipped: Counter) -> dict[Path, list[dict]]:
    """One row per decodable crop."""
    by_file: dict[Path, list[dict]] = {}
    for path, age, p_female, spread in predict_files(model, paths, size, args.batch_size):
        if age is None:
            skipped[p_female] += 1
            print(f"skipped {path}: {p_female}", file=sys.stderr)
            continue
        by_file[path] = [row(path, age, p_female, spread, {})]
    return by_file


def annotate_all(by_file: dict[Path, list[dict]], paths: list[Path], folder: str) -> int:
    """Draw every image's faces into ``folder``; returns how many were drawn (a failure is reported, not fatal)."""
    targets = annotation_targets(paths, Path(folder).expanduser())
    drawn = 0
    for path, found in by_file.items():
        try:
            annotate(path, found, targets[path])
            drawn += 1
        except (OSError, ValueError) as err:  # DecodeError is a ValueError
            print(f"could not annotate {path}: {err}", file=sys.stderr)
    return drawn


def cli() -> int:
    """The ``facetune-predict`` entry point."""
    return main(get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(cli())
