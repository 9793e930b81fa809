"""What the benchmarks that train many runs share: each run in its own process, a few at once, and the JSON out."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


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


def emit(out: dict[str, Any], path: str | None) -> None:
    """Print a benchmark's JSON, and write it to ``path`` too where one is given."""
    text = json.dumps(out, indent=2)
    print(text)
    if path:
        Path(path).write_text(text + "\n")
