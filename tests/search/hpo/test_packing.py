"""The default GPU share: the smallest share whose memory holds the space's largest configuration."""
from search.hpo.packing import CONTEXT_BYTES, HEADROOM, gpu_share, largest_config
from search.hpo.spaces import SPACES, Categorical, Int

GIB = 2**30


def test_small_steps_pack_eight_to_a_gpu_and_large_ones_get_it_whole():
    assert gpu_share(300 * 2**20, 80 * GIB) == 0.125  # a 300 MiB step on an 80 GiB card
    assert gpu_share(7 * GIB, 80 * GIB) == 0.25  # 7 × 1.5 + context = 11.1 GiB > 1/8 of 80
    assert gpu_share(30 * GIB, 80 * GIB) == 1.0
    assert gpu_share(100 * GIB, 80 * GIB) == 1.0  # even when it does not fit: one trial, and its own error
    share = gpu_share(2 * GIB, 16 * GIB)
    assert share * 16 * GIB >= 2 * GIB * HEADROOM + CONTEXT_BYTES and share / 2 * 16 * GIB < 2 * GIB * HEADROOM + CONTEXT_BYTES


def test_largest_config_takes_every_size_at_its_maximum():
    base = {"depth": 3, "base_width": 16, "batch_size": 32, "lr": 1e-3}
    big = largest_config(base, SPACES["scratch"])
    assert (big["depth"], big["base_width"], big["batch_size"], big["dense_units"], big["pool_size"]) == (6, 64, 128, 512, 4)
    assert big["lr"] == 1e-3
    assert largest_config(base, {"depth": Int(2, 4), "batch_size": Categorical((32, 64))})["batch_size"] == 64
