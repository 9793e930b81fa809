"""Named search presets. Any command-line flag overrides the preset's value.

- quick: the main job, a search sized by time: a 9½-minute budget on 2 CPU cores for one architecture
  (``--arch pretrained``), every image at 64 px, trials of up to 8 epochs with ASHA judging at epochs 3 and 6 (the
  scratch CNN: 48 px, 24 epochs, judged at 6 and 12), and
  as many seeds of the best configuration retrained (its ensemble exported) as the budget leaves room for. Its
  spaces are narrowed to where good models lie (experiments/benchmarks/README.md).
- smoke: a seconds-sized search that shows every stage working (48 px, a 1,200-image subset, 6 trials of at most 4
  epochs, tiny scratch networks); the tests run it.
- full: the real search: the whole folder at 128 px, 64 trials per architecture, up to 100 epochs, ASHA
  judging first at epoch 5 and keeping the best third at each rung; no time budget unless ``--budget`` is given.
"""
from search.hpo.spaces import Categorical, Float, Int

PRESETS = {
    "quick": {
        "image_size": 64,
        "max_images": 0,
        "num_samples": 64,  # an upper bound: the budget ends the search
        "max_epochs": 8,
        "grace_period": 3,
        "reduction_factor": 2,
        "retrain_top_k": 2,
        # upper bounds: the budget plans how many run. The budget counts reading the faces and starting Ray, so
        # the whole job ends inside 10 minutes on 2 cores; the retraining's runs are lengthened before more seeds
        # are added, since longer runs pay first (search.budget)
        "retrain_seeds": 4,
        "budget_s": 570.0,
        # the scratch CNN learns from nothing, so 8 epochs starve it: it gets 24, judged at epochs 6 and 12, and
        # pays for them with smaller faces, which train faster and score as well in the same time on validation
        "arch_schedule": {"scratch": {"max_epochs": 24, "grace_period": 6, "image_size": 48}},
        "space_overrides": {
            "scratch": {"depth": Int(3, 5), "base_width": Categorical((16, 32)), "dense_units": Categorical((128, 256)),
                        "batch_size": Categorical((32, 64))},
            # in 8 epochs a backbone trained from the start at about half the head's rate beats one kept frozen
            # and then trained slowly, on validation
            "pretrained": {"unfreeze_epoch": Int(0, 1), "backbone_lr_mult": Float(0.2, 1.0, log=True),
                           "lr": Float(1e-3, 4e-3, log=True), "dense_units": Categorical((128, 256)),
                           "batch_size": Categorical((32, 64))},
        },
    },
    "smoke": {
        "image_size": 48,
        "max_images": 1200,
        "num_samples": 6,
        "max_epochs": 4,
        "grace_period": 2,
        "reduction_factor": 2,
        "retrain_top_k": 2,
        "retrain_seeds": 2,
        "budget_s": None,
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
        "budget_s": None,
        "space_overrides": {},
    },
}
