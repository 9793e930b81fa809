"""Named search presets. Any command-line flag overrides the preset's value.

- quick: a smoke-sized search that shows the whole pipeline on a laptop: 48 px images, a 1,200-image subset,
  6 trials of at most 4 epochs per architecture, small scratch networks. ``--arch both`` ends in a few
  minutes on 2 CPU cores.
- full: the real search: the whole folder at 128 px, 64 trials per architecture, up to 100 epochs, ASHA
  judging first at epoch 5 and keeping the best third at each rung.
"""
from search.spaces import Categorical, Int

PRESETS = {
    "quick": {
        "image_size": 48,
        "max_images": 1200,
        "num_samples": 6,
        "max_epochs": 4,
        "grace_period": 2,
        "reduction_factor": 2,
        "retrain_top_k": 2,
        "retrain_seeds": 2,
        "space_overrides": {
            "scratch": {"depth": Int(2, 4), "base_width": Categorical((8, 16)), "dense_units": Categorical((64, 128)),
                        "batch_size": Categorical((32, 64))},
            "pretrained": {"dense_units": Categorical((64, 128)), "batch_size": Categorical((32, 64))},
        },
    },
    "full": {
        "image_size": 128,
        "max_images": 0,
        "num_samples": 64,
        "max_epochs": 100,
        "grace_period": 5,
        "reduction_factor": 3,
        "retrain_top_k": 3,
        "retrain_seeds": 3,
        "space_overrides": {},
    },
}
