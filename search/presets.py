"""Named search presets. Any command-line flag overrides the preset's value.

- quick: the README's main job, a search sized by time: a 9½-minute budget on 2 CPU cores for one architecture
  (``--arch pretrained``), every image at 64 px, trials of up to 8 epochs with ASHA judging at epochs 3 and 6 (the
  scratch CNN: 48 px, 24 epochs, judged at 6 and 12), and
  as many seeds of the best configuration retrained (its ensemble exported) as the budget leaves room for. Its
  spaces are narrowed to where the first measurements put good models (README, "Recipe").
- smoke: a seconds-sized search that shows every stage working (48 px, a 1,200-image subset, 6 trials of at most 4
  epochs, tiny scratch networks); the tests run it.
- full: the real search: the whole folder at 128 px, 64 trials per architecture, up to 100 epochs, ASHA
  judging first at epoch 5 and keeping the best third at each rung; no time budget unless ``--budget`` is given.
"""
from search.spaces import Categorical, Float, Int

PRESETS = {
    "quick": {
        "image_size": 64,
        "max_images": 0,
        "num_samples": 64,  # an upper bound: the budget ends the search
        "max_epochs": 8,
        "grace_period": 3,
        "reduction_factor": 2,
        "retrain_top_k": 2,
        # upper bounds: the budget plans how many run. 9½ minutes on 2 cores, reading the faces (decoding them on a
        # cold cache) and starting Ray included, so that the whole job ends inside 10 minutes (8¾–9 measured):
        # the first two trials (the study's recipe and the project's found configuration) take 3–3⅔ of the
        # search's 4⅓ minutes, no third fits, and one wave of 2 seeds fills the rest, its runs lengthened as far as
        # the machine's speed allows; longer runs pay before more seeds (README, "Seeds or epochs")
        "retrain_seeds": 4,
        "budget_s": 570.0,
        # the scratch CNN learns from nothing: 8 epochs starve it (87.6% / 7.13 after a 30-minute budget), one
        # 25-epoch run reached 89.9% / 6.90 in 3.4 minutes; ASHA judges its trials at epochs 6 and 12. It pays for
        # its epochs with smaller faces: at 48 px an epoch takes 0.6× one at 64 px, and 28 epochs at 48 px beat
        # 16 at 64 px in about the same time on validation (README, "Face size for the scratch CNN")
        "arch_schedule": {"scratch": {"max_epochs": 24, "grace_period": 6, "image_size": 48}},
        "space_overrides": {
            "scratch": {"depth": Int(3, 5), "base_width": Categorical((16, 32)), "dense_units": Categorical((128, 256)),
                        "batch_size": Categorical((32, 64))},
            # measured at 64 px, 8 epochs: a backbone trained from the start at half the head's rate reached 92.1%
            # / 6.00 on validation against 85.1% / 8.43 frozen for 2 epochs at a tenth of it
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
