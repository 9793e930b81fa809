"""The retraining's Tune experiment: one trial per (configuration, seed), trained on train+validation.

Each pair is a trial of a second experiment, ``<name>/<arch>-retrain``, with the search's resources, so a
retraining run is resumable like a search; search.stages.retrain turns its results into the stage's outputs.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from ray import tune

from experiments.config import TrainConfig
from search.hpo.storage import stage_callbacks
from search.hpo.trainable import TrialData, limit_resources, report_epoch, restored_trainer


@dataclass
class RetrainData:
    """What every retraining trial shares: the search's data plus the configurations being retrained."""

    trial_data: TrialData
    configs: list[dict[str, Any]]  # full TrainConfig dicts, in search rank order


def retrain_trial(config: dict[str, Any], data: RetrainData) -> None:
    """Tune trainable: train configuration ``config['rank']`` with ``config['seed']`` on train+val, report per epoch.

    Its held-out part is the test split (``test_*`` metrics), scored after the last epoch only (NaN before): no
    choice is made on it, and scoring it every epoch would cost about a seventh of the run.
    """
    placement = limit_resources()
    cfg = TrainConfig.from_dict({**data.configs[config["rank"]], "seed": config["seed"], "train_on_val": True})
    trainer, _ = restored_trainer(cfg, data.trial_data, held_out="test", score_each_epoch=False)
    for metrics in trainer.epochs():
        report_epoch(trainer, {**metrics, **placement})


def restorable(experiment_dir: str, trainable=retrain_trial) -> bool:
    """Whether the retraining at ``experiment_dir`` can be resumed. A state in which no trial has a result with its
    (rank, seed) (Tune saved it as the stage started, before its grid gave the trials their configs) holds nothing
    to resume: it is removed, and the retraining starts again."""
    if not tune.Tuner.can_restore(experiment_dir):
        return False
    try:
        results = tune.Tuner.restore(experiment_dir, trainable=trainable).get_results()
    except RuntimeError:  # Tune could not read its trials back: a state saved before any trial was written
        results = []
    configs = [r.config for r in results if r.config]  # a trial with no result yet has none
    if configs and all("rank" in c and "seed" in c for c in configs):
        return True
    if "://" in experiment_dir:  # a remote state is left to its owner; Tune starts a new one beside it
        return False
    shutil.rmtree(experiment_dir, ignore_errors=True)
    return False


def make_retrain_tuner(experiment_dir: str, data: RetrainData, seeds: list[int], cpus: float, gpus: float,
                       concurrency: int, max_failures: int, resume: bool, stop=None, disk_reserve: int = 0
                       ) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(retrain_trial, data=data), {"cpu": cpus, "gpu": gpus})
    if resume and tune.Tuner.can_restore(experiment_dir):
        return tune.Tuner.restore(experiment_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    storage, name = experiment_dir.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        param_space={"rank": tune.grid_search(list(range(len(data.configs)))), "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1, stop=stop,
                                  callbacks=stage_callbacks(experiment_dir, disk_reserve),
                                  # the latest checkpoint is kept: the final model (final_predictions checks it)
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
