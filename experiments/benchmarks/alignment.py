"""Face detection and alignment checked on real UTKFace crops; prints JSON.

    python experiments/benchmarks/alignment.py --data DIR --checkpoint A.pt [B.pt ...] --names test.csv

For a sample of crops (``--names``: a CSV with a ``name`` column, e.g. the retraining's test predictions, so the
model never trained on them) and each detector in ``data_utils.photos.DETECTORS``:
- the crop as it is, and the crop made into a "photo" (rotated ±20°, scaled 0.8–1.6×, pasted at a random place on
  a grey canvas 2.4× its side), are detected and re-aligned;
- detection rate and milliseconds per image;
- the median landmark positions on the crops as they are (the geometry ``UTK_LANDMARKS`` holds);
- the model (one checkpoint, or several averaged as an ensemble) on the original crops and on the re-aligned ones,
  on the same faces: gender accuracy, age MAE and the paired differences.
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from data_utils.cache import NATIVE_SIZE, decode_face
from data_utils.photos import DETECTORS, detect, face_crop_bytes, load_photo
from data_utils.scan import scan_folder
from experiments.objective import predicted_female
from experiments.train import load_model
from models import Ensemble


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Detection and alignment checked on real UTKFace crops (JSON).")
    p.add_argument("--data", required=True, help="folder of UTKFace crops")
    p.add_argument("--checkpoint", nargs="+", required=True, help="retrained checkpoint(s); several = an ensemble")
    p.add_argument("--names", default=None, help="CSV with a 'name' column: only these crops (held-out faces)")
    p.add_argument("--n", type=int, default=300, help="crops sampled (default: 300)")
    p.add_argument("--detectors", default=",".join(DETECTORS), help=f"from: {', '.join(DETECTORS)}")
    p.add_argument("--seed", type=int, default=0)
    return p


def as_photo(crop: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The crop rotated, scaled and pasted somewhere on a larger grey canvas, as a face in a photo."""
    side = NATIVE_SIZE[0]
    angle, scale = rng.uniform(-20, 20), rng.uniform(0.8, 1.6)
    face = crop.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=(128, 128, 128))
    face = face.resize((round(face.width * scale), round(face.height * scale)), Image.BILINEAR)
    canvas_side = round(2.4 * side * max(1.0, scale))
    canvas = Image.new("RGB", (canvas_side, canvas_side), (128, 128, 128))
    x = int(rng.integers(0, max(1, canvas_side - face.width)))
    y = int(rng.integers(0, max(1, canvas_side - face.height)))
    canvas.paste(face, (x, y))
    return canvas


@torch.no_grad()
def score(model: torch.nn.Module, images: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(age, P(female)) for uint8 tensors."""
    ages, probs = [], []
    for start in range(0, len(images), 64):
        age, logit = model(torch.stack(images[start:start + 64]).float() / 255)
        ages.append(age.numpy())
        probs.append(torch.sigmoid(logit).numpy())
    return np.concatenate(ages), np.concatenate(probs)


def main(args: argparse.Namespace) -> dict:
    members = [load_model(torch.load(p, map_location="cpu", weights_only=True), "cpu") for p in args.checkpoint]
    model = (members[0][0] if len(members) == 1 else Ensemble([m for m, _ in members])).eval()
    size = members[0][1].image_size
    files, _ = scan_folder(args.data)
    if args.names:
        keep = set(pd.read_csv(args.names)["name"])
        files = [f for f in files if f.name in keep]
    rng = np.random.default_rng(args.seed)
    files = [files[i] for i in sorted(rng.choice(len(files), min(args.n, len(files)), replace=False))]
    data = [Path(f.path).read_bytes() for f in files]
    crops = [load_photo(b) for b in data]
    photos = [as_photo(c, rng) for c in crops]
    truth_age = np.array([f.age for f in files], float)
    truth_female = np.array([f.gender == 1 for f in files])
    original = [decode_face(b, size)[0] for b in data]
    o_age, o_p = score(model, original)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
           "n_crops": len(files), "image_size": size, "members": len(members), "detectors": {}}
    for name in args.detectors.split(","):
        result = {}
        for kind, images in (("crop", crops), ("photo", photos)):
            start = time.perf_counter()
            found = [detect(img, name) for img in images]
            ms = 1000 * (time.perf_counter() - start) / len(images)
            hit = [i for i, f in enumerate(found) if f]
            aligned = [decode_face(face_crop_bytes(images[i], found[i][0]), size)[0] for i in hit]
            a_age, a_p = score(model, aligned) if aligned else (np.array([]), np.array([]))
            idx = np.array(hit, int)
            ok_o = predicted_female(o_p[idx]) == truth_female[idx]
            ok_a = predicted_female(a_p) == truth_female[idx]
            err_o, err_a = np.abs(o_age[idx] - truth_age[idx]), np.abs(a_age - truth_age[idx])
            result[kind] = {
                "detection_rate": round(len(hit) / len(images), 4), "ms_per_image": round(ms, 1),
                "original_crops": {"gender_acc": round(float(ok_o.mean()), 4), "age_mae": round(float(err_o.mean()), 3)},
                "realigned": {"gender_acc": round(float(ok_a.mean()), 4), "age_mae": round(float(err_a.mean()), 3)},
                "paired_diff": {"gender_acc_points": round(100 * float(ok_a.mean() - ok_o.mean()), 2),
                                "age_mae_years": round(float(err_a.mean() - err_o.mean()), 3),
                                "mean_abs_age_change": round(float(np.abs(a_age - o_age[idx]).mean()), 3),
                                "gender_flips": int((predicted_female(a_p) != predicted_female(o_p[idx])).sum())},
            }
            if kind == "crop" and hit:
                marks = np.stack([found[i][0].landmarks for i in hit]) / NATIVE_SIZE[0]
                result["crop_landmarks_median"] = np.round(np.median(marks, 0), 4).tolist()
                result["crop_landmarks_iqr"] = np.round(np.subtract(*np.percentile(marks, [75, 25], 0)), 4).tolist()
        out["detectors"][name] = result
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(get_args_parser().parse_args())
