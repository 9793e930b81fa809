"""Shared fixtures: the real 5k subset beside the project, a private tensor cache, tiny image folders."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DATA_DIR = Path(os.environ.get("UTKFACE_DIR") or SHARED_DATA / "utkface-5k").resolve()
AAF = SHARED_DATA / "aaf-2k"  # faces from outside UTKFace, for the out-of-domain tests


def pytest_configure(config):
    # Every test process shares one cache under the pytest temp root, so the 5k decode happens once per run
    # and nothing is written to the user's ~/.cache.
    if "FACETUNE_CACHE" not in os.environ:
        os.environ["FACETUNE_CACHE"] = str(Path(config.rootpath) / ".cache" / "test-cache")


# fixtures that run a search, a Ray cluster or a training: every test using one is in the slow tier
SLOW_FIXTURES = {"tiny_search", "chain", "exported", "local_ray", "ood_sets", "small_disk"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"the UTKFace 5k subset is expected at {DATA_DIR} (or set UTKFACE_DIR)")
    return DATA_DIR


def jpeg_bytes(size=(200, 200), mode="RGB", color=(120, 80, 60), fmt="JPEG") -> bytes:
    img = Image.new(mode, size, color if mode != "L" else 128)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def copy_real(data_dir: Path, dest: Path, names: list[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(data_dir / n, dest / n)


# ---------------------------------------------------------------------------------------------------------------
# searches

# image size and subset size go through --set on purpose: a --set of a field a flag owns must reach every stage
TINY = ["--preset", "smoke", "--budget", "none", "--top-k", "2", "--seeds", "2", "--max-epochs", "3", "--grace-period", "1",
        "--reduction-factor", "3",
        "--set", "batch_size=32", "image_size=32", "max_images=300"]


def run_cli(*args, script="search/run.py", timeout=600, env=None):
    """Run one of the project's scripts from the project root; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def run_main(capsys, *args) -> tuple[int, str]:
    """search/run.py's ``main`` in this process, for refusals that come before any Ray start-up; returns the exit
    code and what it wrote to stderr."""
    from search.run import get_args_parser, main

    try:
        code = main(get_args_parser().parse_args(list(map(str, args))))
    except SystemExit as exit:  # argparse refuses a bad choice itself
        code = exit.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory, data_dir):
    """A finished search of both architectures (with retraining and report), shared by the tests that read it."""
    storage = tmp_path_factory.mktemp("runs")
    result = run_cli("--arch", "both", "--data", data_dir, "--storage-path", storage, "--name", "tiny",
                     "--num-samples", "5", *TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return storage / "tiny", result
