"""The Ray cluster a run trains on: joining or starting it, sizing trials to its resources, stopping it."""
from __future__ import annotations

import logging
import math
import signal
import socket
import sys
from pathlib import Path

import ray
from ray import tune

import data_utils
import experiments
import models
import search
from experiments.config import TrainConfig
from models.pretrained import imagenet_state
from search.errors import UsageError
from search.hpo import interrupts, ray_processes
from search.hpo.packing import gpu_share, largest_config, measure_step_memory

# workers log every checkpoint at INFO; warnings and errors still reach the console
QUIET = ray.LoggingConfig(log_level="WARNING")


def check_address(address: str) -> None:
    """Fail fast, in one line, when a host:port cluster address cannot be reached (ray.init would retry a long time)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address!r} is not auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UsageError(f"cannot reach a Ray cluster at {address} ({err.strerror or err}); start one with "
                         "`ray start --head` or fix --address") from None


def connect(address: str | None) -> dict[str, float]:
    """Start a local Ray instance, or join the cluster at ``address``; returns the cluster's resources."""
    # Ray's core resets the signal handlers while it starts: a Ctrl-C then would kill the run outright, so SIGINT
    # waits until this run's handler is back
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        if address:
            check_address(address)
            # ship this project's packages to the cluster, so its nodes need only the dependencies installed
            env = {"py_modules": [data_utils, models, experiments, search], "excludes": ["__pycache__"]}
            try:
                ray.init(address=address, runtime_env=env, logging_level=logging.WARNING, logging_config=QUIET)
            except ConnectionError as err:
                raise UsageError(f"cannot connect to the Ray cluster at {address}: {err}. If it uses token "
                                 "authentication, put its token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None
        else:
            reaped = ray_processes.reap_leftovers()
            if reaped:
                print(f"note: stopped {reaped} Ray process(es) left behind by an earlier run that was killed")
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, logging_config=QUIET)
            ray_processes.record()
    finally:
        interrupts.install()  # Ray's core replaces the SIGTERM handler with one that aborts the process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return ray.cluster_resources()


def measured_gpu_share(configs: dict[str, dict]) -> float:
    """The default GPU share of a trial: one training step of each architecture's largest configuration
    (``configs``: architecture → that configuration) is measured on a GPU of the cluster (search.hpo.packing)."""
    measure = ray.remote(num_gpus=1)(measure_step_memory)
    shares = []
    for arch, config in configs.items():
        state = imagenet_state(TrainConfig.from_dict(config)) if arch == "pretrained" else None
        peak, total, card = ray.get(measure.remote(config, state))
        shares.append(gpu_share(peak, total))
        print(f"{arch}: the largest configuration peaks at {peak / 2**20:.0f} MiB per step on a {card} "
              f"({total / 2**30:.0f} GiB): {round(1 / shares[-1])} trial(s) per GPU")
    return max(shares)


def plan_resources(s, resources: dict[str, float], trials: int) -> tuple[float, int]:
    """(GPUs per trial, concurrency) for the cluster's resources and the run's settings ``s``; refuses GPUs that
    are not there."""
    gpus = resources.get("GPU", 0.0)
    gpt = s.gpus_per_trial
    if gpt is None:
        largest = {arch: largest_config(s.base_config(arch), s.space(arch)) for arch in s.archs}
        gpt = measured_gpu_share(largest) if gpus >= 1 else 0.0
        if gpus == 0:
            print("notice: no GPU in the Ray cluster, so trials train on the CPU (the full preset is sized for GPUs)")
    elif gpt > 0 and gpus == 0:
        raise UsageError(f"--gpus-per-trial {gpt:g} asked for, but the Ray cluster has no GPUs; "
                         "use --gpus-per-trial 0 to train on the CPU")
    elif gpt > gpus:
        raise UsageError(f"--gpus-per-trial {gpt:g} exceeds the cluster's {gpus:g} GPUs")
    if s.cpus_per_trial > resources.get("CPU", 0):
        raise UsageError(f"--cpus-per-trial {s.cpus_per_trial:g} exceeds the cluster's {resources.get('CPU', 0):g} CPUs")
    if s.concurrency is not None:
        concurrency = s.concurrency
    else:
        by_cpu = math.floor(resources.get("CPU", 1) / s.cpus_per_trial)
        concurrency = min(by_cpu, math.floor(gpus / gpt)) if gpt > 0 else by_cpu
    return gpt, max(1, min(concurrency, trials))


def experiment_exists(path: str) -> bool:
    """Whether a Tune experiment (or anything else) is already at ``path``."""
    return tune.Tuner.can_restore(path) or ("://" not in path and Path(path).exists())


def can_restore(path: str) -> bool:
    return tune.Tuner.can_restore(path)


def shutdown() -> None:
    """Stop any Ray instance this process started, and forget its processes."""
    if "ray" in sys.modules and ray.is_initialized():
        ray.shutdown()
        ray_processes.forget()
