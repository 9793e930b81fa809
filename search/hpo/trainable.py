"""The Ray Tune trial: one function that trains a configuration and reports once per epoch.

The faces arrive through Ray's object store (``tune.with_parameters``), already decoded on the driver, and
the ImageNet weights travel the same way, so a worker node needs neither the data folder nor the weights.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from ray import tune

from data_utils.dataset import Faces, Split
from experiments.config import TrainConfig
from experiments.train import NonFiniteLossError, Trainer, fit_parts
from search.hpo.trial_layout import CHECKPOINT_FILE, DIVERGED_FILE, PLACEMENT


@dataclass
class TrialData:
    """What every trial of one search shares: decoded faces per image size, the split, ImageNet weights."""

    faces: dict[int, Faces]
    split: Split
    imagenet_state: dict[str, torch.Tensor] | None = None
    base_config: dict[str, Any] = field(default_factory=dict)


def limit_resources() -> dict[str, Any]:
    """Match torch's threads to the trial's CPUs and, on a shared GPU, cap the trial's share of its memory.

    Returns where the trial runs and what it was given (node, CPUs, GPU share), reported with every epoch so
    that ``trials.csv`` shows how trials were placed and packed.
    """
    import ray

    resources = tune.get_context().get_trial_resources().required_resources
    cpus, gpu_share = resources.get("CPU", 1), resources.get("GPU", 0)
    torch.set_num_threads(max(1, int(cpus)))
    if torch.cuda.is_available() and 0 < gpu_share < 1:
        torch.cuda.set_per_process_memory_fraction(gpu_share)
    return dict(zip(PLACEMENT, (ray.get_runtime_context().get_node_id(), float(cpus), float(gpu_share), time.time())))


def restored_trainer(cfg: TrainConfig, data: TrialData, held_out: str = "val",
                     score_each_epoch: bool = True) -> tuple[Trainer, Faces]:
    """A Trainer for ``cfg`` on the shared data, scoring on the ``held_out`` part ("val", or "test" for a final
    retraining on train+val; every epoch, or after the last one only), restored from Tune's checkpoint when the
    trial is a retry or a resumed one; also returns the held-out faces."""
    if cfg.image_size not in data.faces:
        raise ValueError(f"the search decoded faces at {sorted(data.faces)} px, but this trial asks for "
                         f"{cfg.image_size} px; set the size with --image-size")
    train, held_out_faces = fit_parts(data.faces[cfg.image_size], data.split, cfg)
    trainer = Trainer(cfg, train, held_out_faces, imagenet_state=data.imagenet_state, held_out=held_out,
                      score_each_epoch=score_each_epoch)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_checkpoint(torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True))
    return trainer, held_out_faces


def report_epoch(trainer: Trainer, metrics: dict[str, Any], write_extra: Callable[[str], None] | None = None) -> None:
    """Report one epoch's metrics to Tune with a checkpoint of the trainer (and any extra files written beside it)."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(trainer.checkpoint(), os.path.join(folder, CHECKPOINT_FILE))
        if write_extra is not None:
            write_extra(folder)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def train_trial(config: dict[str, Any], data: TrialData) -> None:
    """Tune's trainable: overlay the trial's ``config`` on the search's base config, train, report each epoch."""
    placement = limit_resources()
    diverged = Path(tune.get_context().get_trial_dir()) / DIVERGED_FILE
    if diverged.exists():
        # a retry after divergence would diverge again from the same checkpoint; end with the original reason
        raise NonFiniteLossError(json.loads(diverged.read_text())["reason"])
    trainer, _ = restored_trainer(TrainConfig.from_dict({**data.base_config, **config}), data)
    try:
        for metrics in trainer.epochs():
            report_epoch(trainer, {**metrics, **placement})
    except NonFiniteLossError as err:
        diverged.write_text(json.dumps({"reason": str(err)}))
        raise
