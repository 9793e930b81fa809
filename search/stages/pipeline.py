"""One run, stage by stage: check and connect, read the faces, then per architecture search and retrain, then score
the out-of-domain sets and write the report. ``search/run.py`` is its command line."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import shlex
import signal
import sys
import time

import torch

from data_utils.dataset import (
    SPLIT_FILE,
    NoUsableImagesError,
    Split,
    SplitMismatchError,
    TooFewImagesError,
    load_faces,
    make_split,
)
from data_utils.sources import AgeRangeError
from experiments.config import TrainConfig
from experiments.device import resolve_precision
from models.pretrained import imagenet_state
from search import budget
from search.errors import UsageError
from search.hpo import cluster, interrupts, ray_processes, storage
from search.hpo.packing import largest_config
from search.hpo.retraining import RetrainData, make_retrain_tuner, restorable
from search.hpo.stopper import BudgetStopper
from search.hpo.storage import StorageError
from search.hpo.study import study_name, study_storage_file
from search.hpo.trainable import TrialData
from search.hpo.tuning import SearchPlan, close_stale_trials, make_tuner, recipe_points
from search.report import write_report
from search.stages import manifest
from search.stages.lock import ExperimentLock
from search.stages.manifest import ManifestError
from search.stages.ood import check_sets, run_ood
from search.stages.results import (
    PLAN_FILE,
    TRIALS_FILE,
    best_configs,
    manifest_trials,
    read_trials,
    summary_table,
    trial_rows,
    write_outputs,
    write_trials,
)
from search.stages.retrain import collect, write_retrain_outputs
from search.stages.settings import RunSettings, record_resume, save_new, settings_path

# errors of the checks before anything is written: bad input, reported in one line
CHECK_ERRORS = (NoUsableImagesError, TooFewImagesError, SplitMismatchError, AgeRangeError, FileNotFoundError,
                NotADirectoryError, PermissionError, StorageError, ValueError)
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)


def run(args: argparse.Namespace, s: RunSettings) -> int:
    """Lock the experiment of the resolved settings ``s``, run the stages; every way a run ends, in one line and an
    exit code."""
    interrupts.install()
    lock = None
    try:
        lock = ExperimentLock(s.root).acquire()  # a second process on the same experiment is refused at once
        interrupts.set_hint(f"continue with: {resume_command(s)}")
        return run_stages(s, args)
    except interrupts.Interrupted as stop:
        if lock is not None and not settings_path(s.root).is_file():
            lock.release(remove=True)
        return _stopped(stop, s)
    except StorageError as err:  # state that cannot be restored, or a disk too small to start on
        return _refuse(str(err))
    except OSError as err:
        if err.errno not in DISK_ERRORS or lock is None:
            raise
        return _write_failed(err, s)
    except UsageError as err:
        if lock is not None:
            lock.release(remove=True)
        return _refuse(str(err))
    finally:
        if lock is not None:
            lock.release()


def run_stages(s: RunSettings, args: argparse.Namespace) -> int:
    """Every check, then the stages ``args.stage`` names, in order."""
    searching = args.stage in ("all", "search")
    training = args.stage != "report"
    faces, split, resources = check_and_connect(s, args, searching, training)
    gpus_per_trial, concurrency, disk_reserve = resources
    for arch in s.archs if training else ():
        data = prepare_trial_data(s, arch, faces, split)
        print(f"{arch}: trials train in {trial_precision(data.base_config, gpus_per_trial, s.cpus_per_trial)}",
              flush=True)
        if searching:
            run_search(s, arch, data, gpus_per_trial, concurrency, args.resume, disk_reserve)
        if args.stage in ("all", "retrain"):
            run_retrain(s, arch, data, gpus_per_trial, concurrency, disk_reserve)
    if s.ood and args.stage != "search":
        scored = run_ood(s.root, s.ood, {arch: s.image_size_for(arch) for arch in s.archs}, cache_dir=s.cache_dir)
        print(f"out of domain: {scored}", flush=True)
    if args.stage in ("all", "report"):
        try:
            report = write_report(s.root, faces, split)
        except ManifestError as err:
            raise UsageError(str(err)) from None
        print(f"\nreport: {report / 'report.md'} and {report / 'report.html'}")
    print(f"\nexperiment folder: {s.root}\nTensorBoard: tensorboard --logdir {s.storage}/{s.name}")
    return _shutdown(0)


def check_and_connect(s: RunSettings, args: argparse.Namespace, searching: bool, training: bool):
    """Check everything, join Ray, then write the experiment's settings and split; returns the faces, the split
    and (GPUs per trial, concurrency, disk reserve). Every check runs before anything is written, so a refused
    run leaves no half-made experiment behind."""
    resources = (0.0, 1, 0)
    try:
        if searching and not args.resume:
            for arch in s.archs:
                if cluster.experiment_exists(s.experiment_dir(arch)) or settings_path(s.root).is_file():
                    raise UsageError(f"experiment {s.experiment_dir(arch)} already exists; pass --resume to "
                                     "continue it or --name NEW to start another")
        setup_started = time.monotonic()
        faces, split, new_split = load_data(s, searching, args.resume)
        if s.ood and args.stage != "search":
            check_sets(s.ood)
        if training:
            gpus_per_trial, concurrency = cluster.plan_resources(s, cluster.connect(s.address), s.num_samples)
            resources = (gpus_per_trial, concurrency, check_storage_room(s, concurrency))
        setup_seconds = time.monotonic() - setup_started
    except CHECK_ERRORS as err:
        raise UsageError(str(err)) from None
    s.root.mkdir(parents=True, exist_ok=True)
    if new_split:
        split.save(s.root / SPLIT_FILE, faces)
    if searching and not args.resume:
        save_new(s)
    else:
        record_resume(s, args.stage)
    if training and s.budget_s is not None:
        budget.Ledger(s.root, s.budget_s).add(budget.SETUP_STAGE, setup_seconds)
    print(f"data: {faces.report.usable} usable images in {faces.report.folder} ({sum(faces.report.skipped.values())} "
          f"skipped); split {len(split.train)}/{len(split.val)}/{len(split.test)}; faces at "
          + ", ".join(f"{s.image_size_for(arch)} px ({arch})" for arch in s.archs))
    if training:
        print(f"watch the trials: tensorboard --logdir {s.storage}/{s.name}", flush=True)
    return faces, split, resources


def load_data(s: RunSettings, searching: bool, resume: bool):
    """The faces and the split: the experiment's saved split when it has one, else a new one (not yet saved)."""
    faces = load_faces(s.data_dir, s.image_size_for(s.archs[0]), s.cache_dir)
    split_path = s.root / SPLIT_FILE
    if split_path.is_file() and (resume or not searching):
        return faces, Split.load(split_path, faces), False
    if not searching:
        raise UsageError(f"no split at {split_path}; run the search stage first")
    base = s.base_config(s.archs[0])
    return faces, make_split(faces, base["val_fraction"], base["test_fraction"], base["split_seed"], s.max_images), True


def prepare_trial_data(s: RunSettings, arch: str, faces, split) -> TrialData:
    """Decode once on the driver; the result goes to every trial through Ray's object store. ``faces`` and
    ``split`` are at the first architecture's size: another size is read from its own cache, with the saved split
    (set-up time in the budget: on a cold cache it decodes them)."""
    started = time.monotonic()
    base = s.base_config(arch)
    size = s.image_size_for(arch)
    if size != s.image_size_for(s.archs[0]):
        faces = load_faces(s.data_dir, size, s.cache_dir)
        split = Split.load(s.root / SPLIT_FILE, faces)
    state = imagenet_state(TrainConfig.from_dict(base)) if arch == "pretrained" else None
    data = TrialData(faces={size: faces}, split=split, imagenet_state=state, base_config=base)
    if s.budget_s is not None:
        budget.Ledger(s.root).add(budget.SETUP_STAGE, time.monotonic() - started)
    return data


def trial_precision(cfg: dict, gpus_per_trial: float, cpus_per_trial: float) -> str:
    """How trials of ``cfg`` compute, in words (experiments.device), for the run's one line about it."""
    if gpus_per_trial > 0 and not torch.cuda.is_available():  # the GPUs are on other nodes (or declared only)
        return "the cluster's GPUs, bf16 where the card supports it"
    device = torch.device("cuda" if gpus_per_trial > 0 else "cpu")
    precision = resolve_precision(cfg["precision"], device, cfg["channels_last"], cfg["arch"], cfg["image_size"])
    return precision.describe(device) + (f", {cpus_per_trial:g} thread(s) each" if gpus_per_trial == 0 else "")


def run_search(s: RunSettings, arch: str, data: TrialData, gpus_per_trial: float, concurrency: int, resume: bool,
               disk_reserve: int = 0):
    """Run (or resume) one architecture's search, write its summaries and its manifest entry."""
    local = s.root / arch
    local.mkdir(parents=True, exist_ok=True)
    plan = search_plan(s, arch, gpus_per_trial, concurrency, disk_reserve)
    if s.budget_s is not None:
        ledger = budget.Ledger(s.root, s.budget_s)
        limit = budget.plan_search(ledger, s.archs, arch, s.epochs_for(arch), len(data.split.train),
                                   len(data.split.val), seeded_first_wave=len(recipe_points(plan)) >= concurrency)
        before = ledger.spent.get(f"{arch}/search")
        print(f"{arch}: the search may spend {budget.format_duration(limit)} of the "
              f"{budget.format_duration(s.budget_s)} budget"
              + (f" ({budget.format_duration(before)} spent before)" if before else ""))
    record = {**dataclasses.asdict(plan), "space_overrides": s.space_overrides.get(arch, {})}
    (local / PLAN_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    resume = resume and cluster.can_restore(plan.experiment_dir)
    if resume and (note := storage.recover_state(plan.experiment_dir)):
        print(f"note: {note}")
    print(f"\n== {arch}: {'resuming' if resume else 'starting'} {'up to ' if s.budget_s else ''}{s.num_samples} trials × "
          f"≤{s.epochs_for(arch)} epochs, "
          f"{concurrency} at a time ({s.cpus_per_trial:g} CPU, {gpus_per_trial:g} GPU each) → {plan.experiment_dir}",
          flush=True)
    grid = fit_search(s, arch, plan, data, resume)
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


def search_plan(s: RunSettings, arch: str, gpus_per_trial: float, concurrency: int, disk_reserve: int) -> SearchPlan:
    """Everything the search of ``arch`` needs from the run's settings."""
    return SearchPlan(arch=arch, experiment_dir=s.experiment_dir(arch), num_samples=s.num_samples,
                      max_epochs=s.epochs_for(arch), grace_period=s.grace_for(arch), reduction_factor=s.reduction_factor,
                      concurrency=concurrency, cpus_per_trial=s.cpus_per_trial, gpus_per_trial=gpus_per_trial,
                      seed=s.seed, scheduler=s.scheduler, max_failures=s.max_failures,
                      space_overrides=s.space_overrides_for(arch),
                      optuna_storage=str(study_storage_file(s.root / arch)), study_name=study_name(s.name, arch),
                      fixed=s.fixed, ledger_root=str(s.root) if s.budget_s is not None else None,
                      disk_reserve=disk_reserve)


def fit_search(s: RunSettings, arch: str, plan: SearchPlan, data: TrialData, resume: bool):
    """The search's Tune run; on an interrupt, what each trial reached is written before the interrupt goes on (no
    best configuration is chosen from half a search)."""
    grid = None
    ray_processes.record()
    try:
        with interrupts.tune_stage():
            grid = make_tuner(plan, data, resume).fit()
    except interrupts.Interrupted:
        if grid is not None:
            try:
                write_trials(s.root / arch, trial_rows(grid, data.base_config, s.epochs_for(arch), interrupted=True,
                                                       budgeted=s.budget_s is not None))
            except OSError:  # a full disk: the interrupt's own line says so; the table is written again on resume
                pass
        raise
    return grid


def run_retrain(s: RunSettings, arch: str, data: TrialData, gpus_per_trial: float, concurrency: int,
                disk_reserve: int = 0):
    """Retrain the search's top configurations with several seeds and score them on the test split."""
    trials = read_trials(manifest.locate(s.root, manifest.require(s.root, arch, "search")["trials_csv"]))
    experiment = s.experiment_dir(f"{arch}-retrain")
    if cluster.can_restore(experiment) and (note := storage.recover_state(experiment)):
        print(f"note: {note}")
    resume = restorable(experiment)
    picked, seeds, stopper = retrain_choice(s, arch, data, trials, concurrency, resume)
    if not picked:
        never_ran = s.budget_s is not None and len(trials) and (trials["epochs"] == 0).all()
        print(f"{arch}: " + ("no search trial ran, the time budget was spent before the first one started; give a "
                             "longer --budget" if never_ran else "every search trial failed") + "; nothing to retrain")
        return None
    configs = [p["config"] for p in picked]
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


def retrain_choice(s: RunSettings, arch: str, data: TrialData, trials, concurrency: int, resume: bool):
    """The ranked configurations to retrain, their seeds and the budget's stopper (None without a budget): the
    settings' top-k × seeds, or as many as the budget's plan fits, at the planned length."""
    ranked = best_configs(trials, data.base_config, k=s.retrain_top_k)
    top_k, n_seeds = s.retrain_top_k, s.retrain_seeds
    if s.budget_s is None:
        return ranked[:top_k], list(range(n_seeds)), None
    ledger = budget.Ledger(s.root, s.budget_s)
    if ranked and not resume:
        best = trials[trials["trial_id"] == ranked[0]["trial_id"]].iloc[0]
        plan, line = budget.plan_retrain_for(ledger, s.archs, arch, best, ranked[0]["config"]["epochs"],
                                             len(data.split.train), len(data.split.val), concurrency,
                                             s.retrain_top_k, s.retrain_seeds)
        top_k, n_seeds = plan.configs, plan.seeds
        print(line)
    planned = ledger.retrain_epochs.get(arch)
    if planned:
        ranked = [{**r, "config": {**r["config"], "epochs": planned}} for r in ranked]
    return ranked[:top_k], list(range(n_seeds)), BudgetStopper(s.root, f"{arch}/retrain")


def check_storage_room(s: RunSettings, concurrency: int, refuse: bool = True) -> int:
    """Refuse a storage disk that cannot take one round of checkpoints; returns the free space under which a
    running stage is stopped (search.hpo.storage)."""
    if "://" in s.storage:
        return 0
    largest = max(storage.checkpoint_bytes(largest_config(s.base_config(arch), s.space(arch))) for arch in s.archs)
    if refuse:
        storage.check_room(s.root, largest, concurrency)
    return storage.needed_bytes(largest, concurrency)


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


def _write_failed(err: OSError, s: RunSettings) -> int:
    """A write that failed (a full disk, permissions): the stages' state is written then renamed, so the last good
    one stays; says how much room a stage needs and how to continue."""
    where = err.filename or s.root
    try:
        need = f", and a stage needs {storage.megabytes(check_storage_room(s, s.concurrency or 1, refuse=False))} to go on"
    except Exception:  # the estimate is a courtesy; the error is what matters
        need = ""
    print(f"error: cannot write {where}: {err.strerror} ({storage.megabytes(storage.free_bytes(s.root))} free there"
          f"{need}); free space or fix permissions, then continue with: {resume_command(s)}", file=sys.stderr)
    return _shutdown(1)


def _shutdown(code: int) -> int:
    """Stop any Ray instance this run started (and forget its processes); returns ``code``."""
    cluster.shutdown()
    return code


def _refuse(message: str) -> int:
    """Print one line, stop any Ray instance this run started, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    return _shutdown(2)
