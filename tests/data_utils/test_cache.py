import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from conftest import copy_real

from data_utils.cache import load_or_build
from data_utils.dataset import load_faces
from data_utils.scan import scan_folder


def _load(folder, cache_dir):
    files, _ = scan_folder(folder)
    _, path, built = load_or_build(files, 40, cache_dir)
    return built, str(path)


def test_cache_is_reused_and_keyed_by_content_and_size(tmp_path, data_dir):
    names = sorted(os.listdir(data_dir))[:30]
    copy_real(data_dir, tmp_path / "a", names)
    cache = tmp_path / "cache"
    built, path = _load(tmp_path / "a", cache)
    assert built
    mtime = os.stat(path).st_mtime_ns
    assert _load(tmp_path / "a", cache) == (False, path)
    assert os.stat(path).st_mtime_ns == mtime
    # same bytes under another folder name: same key; one more file or another size: a new key
    copy_real(data_dir, tmp_path / "b", names)
    assert _load(tmp_path / "b", cache) == (False, path)
    copy_real(data_dir, tmp_path / "b", sorted(os.listdir(data_dir))[30:31])
    assert _load(tmp_path / "b", cache)[1] != path
    files, _ = scan_folder(tmp_path / "a")
    assert load_or_build(files, 48, cache)[1] != path
    assert not list(cache.glob("*.tmp"))
    data = torch.load(path, weights_only=True)
    assert data["images"].dtype == torch.uint8 and data["images"].shape == (30, 3, 40, 40)


def test_concurrent_loaders_build_once(tmp_path, data_dir):
    copy_real(data_dir, tmp_path / "a", sorted(os.listdir(data_dir))[:200])
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(3, mp_context=ctx) as pool:
        results = list(pool.map(_load, [tmp_path / "a"] * 3, [tmp_path / "cache"] * 3))
    assert sum(built for built, _ in results) == 1
    assert len({path for _, path in results}) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_second_load_of_the_5k_subset_is_fast(data_dir):
    load_faces(data_dir, 128)  # builds the cache if this run has not yet
    start = time.perf_counter()
    faces = load_faces(data_dir, 128)
    elapsed = time.perf_counter() - start
    assert faces.images.shape == (4980, 3, 128, 128)
    # a correctness guard, not a benchmark: the 5k load is ~0.2 s here; 3 s means the cache was not used
    assert elapsed < 3.0


def test_a_truncated_cache_is_rebuilt(tmp_path, data_dir):
    copy_real(data_dir, tmp_path / "a", sorted(os.listdir(data_dir))[:20])
    built, path = _load(tmp_path / "a", tmp_path / "cache")
    whole = open(path, "rb").read()
    for damaged in (whole[: len(whole) // 2], b"", b"not a cache"):
        open(path, "wb").write(damaged)
        built, again = _load(tmp_path / "a", tmp_path / "cache")
        assert built and again == path
        assert torch.load(path, weights_only=True)["images"].shape == (20, 3, 40, 40)
