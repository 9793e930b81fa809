"""Predict age and gender for face crops with an exported model; on the CPU, without Ray.

    python search/predict.py --model runs/quick/export/pretrained face1.jpg face2.png
    python search/predict.py --model EXPORT_DIR --data DIR [--out predictions.csv] [--evaluate]

Images of any size and mode are prepared exactly as in training (``data_utils.cache.decode_face``). A file
that cannot be read is reported and skipped; the exit code is non-zero only when nothing was predicted.
With ``--evaluate`` the folder's UTKFace names give the true labels, under the training's parsing, skipping
and de-duplication rules, and a JSON line with n, gender accuracy and age MAE is printed.
"""
import os
import sys

if __name__ == "__main__" and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])  # import the project's packages, not sibling files

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
from collections import Counter  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from data_utils.cache import decode_file, decode_workers  # noqa: E402
from data_utils.scan import ScanReport, list_files, scan_folder  # noqa: E402
from experiments.config import TrainConfig  # noqa: E402
from experiments.objective import gender_accuracy, predicted_female  # noqa: E402
from models import Ensemble, build_model  # noqa: E402

EXPORT_FILES = ("config.json", "model.pt", "preprocessing.json")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict age and gender for face crops with an exported model.")
    p.add_argument("--model", required=True, help="export folder written by search/export.py")
    p.add_argument("images", nargs="*", help="image files to predict")
    p.add_argument("--data", default=None, help="a folder of images to predict (instead of listing files)")
    p.add_argument("--out", default="predictions.csv", help="CSV of predictions (default: predictions.csv)")
    p.add_argument("--evaluate", action="store_true",
                   help="with --data of UTKFace-named files: print JSON with n, gender accuracy and age MAE")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    return p


class ExportFolderError(ValueError):
    pass


def load_export(folder: str | os.PathLike) -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild the exported model from its config and weights (``weights_only`` loading)."""
    root = Path(folder).expanduser()
    missing = [f for f in EXPORT_FILES if not (root / f).is_file()]
    if missing:
        raise ExportFolderError(f"{root} is not an export folder (missing {', '.join(missing)}); "
                                "make one with `python search/export.py --experiment DIR`")
    try:
        cfg = TrainConfig.from_dict(json.loads((root / "config.json").read_text()))
    except (json.JSONDecodeError, KeyError, ValueError) as err:
        raise ExportFolderError(f"{root / 'config.json'} is not a valid model config ({err}); export the model again "
                                "with `python search/export.py --experiment DIR`") from None
    try:
        state = torch.load(root / "model.pt", map_location="cpu", weights_only=True)
        if "members" in state:  # an ensemble (search/export.py): one state dict per member
            members = [build_model(cfg, load_weights=False) for _ in state["members"]]
            for member, member_state in zip(members, state["members"]):
                member.load_state_dict(member_state)
            model = Ensemble(members)
        else:
            model = build_model(cfg, load_weights=False)
            model.load_state_dict(state)
    except Exception as err:  # truncated or corrupt: RuntimeError, EOFError or an unpickling error
        raise ExportFolderError(f"{root / 'model.pt'} cannot be read (truncated or corrupt: {type(err).__name__}); "
                                "export the model again with `python search/export.py --experiment DIR`") from None
    return model.eval(), cfg


@torch.no_grad()
def predict_files(model: torch.nn.Module, paths: list[Path], size: int, batch_size: int = 64):
    """Yield (path, age, p_female) for each decodable file and (path, None, reason) for the others, in order."""
    with ThreadPoolExecutor(decode_workers()) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            decoded = [(tensor, reason) for tensor, _, reason in pool.map(lambda p: decode_file(p, size), chunk)]
            good = [i for i, (t, _) in enumerate(decoded) if t is not None]
            results = {}
            if good:
                x = torch.stack([decoded[i][0] for i in good]).float() / 255
                age, logit = model(x)
                results = dict(zip(good, zip(age.tolist(), torch.sigmoid(logit).tolist())))
            for i, path in enumerate(chunk):
                if i in results:
                    yield path, results[i][0], results[i][1]
                else:
                    yield path, None, decoded[i][1]


def empty_folder_message(folder: Path, report: ScanReport, evaluate: bool) -> str:
    """Why a folder gave nothing to predict, with what it holds."""
    if not report.files_seen:
        return f"no images to predict: the folder is empty ({folder})"
    found = ", ".join(f"{n} {r}" for r, n in sorted(report.skipped.items()))
    if evaluate:
        return (f"no images to evaluate in {folder}: {report.files_seen} entries, none usable ({found}); --evaluate "
                "needs UTKFace names (age_gender_race_datetime.jpg.chip.jpg): drop --evaluate to only predict them")
    return f"no images to predict in {folder}: {report.files_seen} entries, no regular file ({found})"


def main(args: argparse.Namespace) -> int:
    try:
        model, cfg = load_export(args.model)
        if args.data and args.images:
            raise ValueError("give image files or --data DIR, not both")
        if args.evaluate and not args.data:
            raise ValueError("--evaluate needs --data DIR with UTKFace-named files")
        labels, skipped = {}, Counter()
        if args.data:
            folder = Path(args.data).expanduser().resolve()
            if not folder.is_dir():
                raise ValueError(f"--data {folder} is not a folder")
            if args.evaluate:
                files, report = scan_folder(folder)  # the training's naming, skipping and de-duplication rules
                dropped = report.duplicate_copies_dropped + report.conflicting_files_dropped
                if dropped:
                    report.skipped["duplicate_or_conflicting"] += dropped
                paths = [Path(f.path) for f in files]
                labels = {Path(f.path): (f.age, f.gender) for f in files}
            else:
                report = ScanReport(str(folder))
                paths = list_files(folder, report)  # links that loop or lead nowhere are counted, not dropped
            skipped.update(report.skipped)
            if not paths:
                raise ValueError(empty_folder_message(folder, report, args.evaluate))
        else:
            paths = [Path(p).expanduser() for p in args.images]
            if not paths:
                raise ValueError("no images given: list image files or pass --data DIR")
    except (ExportFolderError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows, errors = [], 0
    for path, age, p_female in predict_files(model, paths, cfg.image_size, args.batch_size):
        if age is None:
            errors += 1
            skipped[p_female] += 1
            print(f"skipped {path}: {p_female}", file=sys.stderr)
            continue
        row = {"file": str(path), "age": age, "p_female": p_female,
               "gender": "female" if predicted_female(p_female) else "male"}
        if path in labels:
            row["true_age"], row["true_gender"] = labels[path]
        rows.append(row)
    if rows:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"predicted {len(rows)} image(s), skipped {sum(skipped.values())}"
          + (f" ({', '.join(f'{n} {r}' for r, n in sorted(skipped.items()))})" if skipped else "")
          + (f" → {args.out}" if rows else ""), file=sys.stderr)
    if args.evaluate and rows:
        n = len(rows)
        acc = gender_accuracy([r["p_female"] for r in rows], [r["true_gender"] for r in rows])
        mae = sum(abs(r["age"] - r["true_age"]) for r in rows) / n
        print(json.dumps({"n": n, "gender_acc": round(acc, 4), "age_mae": round(mae, 3),
                          "skipped": dict(sorted(skipped.items()))}))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
