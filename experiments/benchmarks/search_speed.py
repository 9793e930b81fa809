"""ASHA against FIFO: the same search (same seed, trials, epochs) run twice, printed as JSON.

    python experiments/benchmarks/search_speed.py --data ../shared/data/utkface-5k [--arch scratch] [search flags...]

Any flag it does not know is passed to ``search/run.py`` (e.g. ``--preset smoke``, ``--num-samples 32
--max-epochs 30 --gpus-per-trial 0.25``). Reports, for each scheduler, the best objective reached, the
trial-epochs trained and the wall time of the whole search (Ray start-up included).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compare ASHA with FIFO on one search.")
    parser.add_argument("--data", default=None, help="folder of UTKFace crops (default: $UTKFACE_DIR)")
    parser.add_argument("--arch", default="scratch", choices=("scratch", "pretrained"))
    parser.add_argument("--storage-path", default=None, help="where both searches are written (default: a temp folder)")
    return parser


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs"
    except ImportError:
        pass
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU"


def run_once(scheduler: str, args: argparse.Namespace, extra: list[str], storage: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "search" / "run.py"), "--arch", args.arch, "--scheduler", scheduler,
           "--name", f"bench-{scheduler}", "--storage-path", str(storage), *extra]
    if args.data:
        cmd += ["--data", args.data]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{scheduler} search failed:\n{done.stderr[-3000:]}")
    trials = pd.read_csv(storage / f"bench-{scheduler}" / args.arch / "trials.csv")
    best = trials.loc[trials["score_objective"].idxmin()]
    return {
        "best_objective": round(float(best["score_objective"]), 4),
        "best_val_gender_acc": round(float(best["score_val_gender_acc"]), 4),
        "best_val_age_mae": round(float(best["score_val_age_mae"]), 3),
        "trials": int(len(trials)),
        "trials_stopped_early": int((trials["status"] == "stopped_early").sum()),
        "trial_epochs": int(trials["epochs"].sum()),
        "wall_seconds": round(wall, 1),
    }


def main(args: argparse.Namespace, extra: list[str]) -> int:
    storage = Path(args.storage_path or tempfile.mkdtemp(prefix="search-speed-")).resolve()
    results = {s: run_once(s, args, extra, storage) for s in ("asha", "fifo")}
    print(json.dumps({
        "machine": machine(), "arch": args.arch, "search_flags": extra, **results,
        "epochs_saved_by_asha": round(1 - results["asha"]["trial_epochs"] / results["fifo"]["trial_epochs"], 3),
        "wall_speedup": round(results["fifo"]["wall_seconds"] / results["asha"]["wall_seconds"], 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    known, unknown = get_args_parser().parse_known_args()
    sys.exit(main(known, unknown))
