"""What the benchmarks that train many runs share: each run in its own process, a few at once, one training run to
its end, and the JSON out."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from data_utils.dataset import Faces, Split
from experiments.config import TrainConfig
from experiments.train import Trainer, fit_parts, prepare_data


def run_each(script: str, jobs: Sequence[tuple], options: Callable[[tuple], list[str]], workers: int) -> list[dict]:
    """Run ``script --run-one <job...> --to FILE <options(job)>`` for every job, ``workers`` processes at once (one
    process per run keeps runs from sharing torch's threads), and return the JSON each wrote, in job order."""
    with tempfile.TemporaryDirectory() as tmp:
        def launch(index_job: tuple[int, tuple]) -> dict[str, Any]:
            index, job = index_job
            to = Path(tmp) / f"{index}.json"
            cmd = [sys.executable, script, "--run-one", *map(str, job), "--to", str(to), *options(job)]
            subprocess.run(cmd, check=True)
            return json.loads(to.read_text())

        with ThreadPoolExecutor(max(1, workers)) as pool:
            return list(pool.map(launch, enumerate(jobs)))


def train_to_the_end(cfg: TrainConfig) -> tuple[Trainer, Faces, Split, float]:
    """Train ``cfg`` on its train split on one thread (the runs beside it have the other cores); returns the trainer
    at its last epoch, the faces, their split and the training seconds."""
    torch.set_num_threads(1)
    faces, split = prepare_data(cfg)
    train, val = fit_parts(faces, split, cfg)
    start = time.perf_counter()
    trainer = Trainer(cfg, train, val)
    for _ in trainer.epochs():
        pass
    return trainer, faces, split, time.perf_counter() - start


def emit(out: dict[str, Any], path: str | None) -> None:
    """Print a benchmark's JSON, and write it to ``path`` too where one is given."""
    text = json.dumps(out, indent=2)
    print(text)
    if path:
        Path(path).write_text(text + "\n")
