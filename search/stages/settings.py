"""The resolved run: preset → the experiment's saved settings → flags → ``--set``, merged once.

``resolve`` is the one place that reads the command line; every stage after it reads the frozen
``RunSettings`` it returns. A new experiment saves them (``search_settings.json``) before any trial starts;
``--resume`` and the later stages read them back, so a resumed search needs only ``--name``. A flag that
contradicts the saved experiment is refused, except those in ``MAY_CHANGE`` (where the data and cache live,
resources, concurrency, retries, the cluster address), whose new values are recorded in the file's ``resumes``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_utils.cache import check_image_size
from data_utils.sources import is_labels_file, join_sources, split_sources
from experiments.config import TrainConfig, coerce_values, parse_overrides
from models import ARCHS as MODEL_ARCHS
from search.budget import format_duration, min_budget_s, parse_budget
from search.errors import UsageError
from search.files import write_json
from search.hpo.presets import PRESETS
from search.hpo.spaces import dist_from_json, dist_to_json

SETTINGS_FILE = "search_settings.json"
# without --preset: the full search where GPUs are (a visible GPU, or a cluster given with --address), the quick,
# time-budgeted one on a CPU, where the full preset's 64 trials × 100 epochs at 128 px would take days; with
# --budget alone, the quick preset's sizes and spaces under the given budget
GPU_PRESET, CPU_PRESET = "full", "quick"

ARCHS = tuple(MODEL_ARCHS)  # the models registry's, in its order
ARCH_CHOICES = (*ARCHS, "both")
STAGES = ("all", "search", "retrain", "report")
SCHEDULERS = ("asha", "fifo")

# fields a flag may change on --resume or a later stage: where things live and how the work is spread, never
# what is trained
MAY_CHANGE = ("data_dir", "ood", "cache_dir", "weights", "cpus_per_trial", "gpus_per_trial", "concurrency", "max_failures",
              "address", "budget_s")
# --set keys that a flag owns: their value flows into the flag's field, so every stage sees one value
SET_OWNED = {"image_size": "image_size", "max_images": "max_images", "seed": "seed", "data_dir": "data_dir",
             "cache_dir": "cache_dir", "weights_path": "weights", "epochs": "max_epochs"}
SET_REFUSED = {"arch": "choose architectures with --arch",
               "train_on_val": "the retraining stage sets it; the search must keep the validation split"}


def default_preset(args: argparse.Namespace) -> str:
    """The preset a run without --preset starts from (see GPU_PRESET, CPU_PRESET)."""
    if getattr(args, "budget", None) is not None:
        return CPU_PRESET
    import torch

    return GPU_PRESET if args.address or torch.cuda.is_available() else CPU_PRESET


@dataclass(frozen=True)
class RunSettings:
    """Everything a search, its resume and its later stages need, resolved and validated."""

    name: str
    storage: str  # absolute local path or URI; the experiment is <storage>/<name>
    local_root: str  # where settings, split, manifest, summaries and report are written
    preset: str
    archs: tuple[str, ...]  # the architectures this invocation works on
    data_dir: str
    image_size: int
    max_images: int
    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: int
    retrain_top_k: int
    retrain_seeds: int
    budget_s: float | None = None  # the whole run's time budget (search.budget); None: bounded by trials and epochs
    scheduler: str = "asha"
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: measured on the cluster's GPUs (search.hpo.packing), 0 without GPUs
    concurrency: int | None = None  # None: as many trials as the resources hold
    max_failures: int = 2
    address: str | None = None
    cache_dir: str | None = None
    weights: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set values of training fields no flag owns
    space_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # arch → parameter → dist_to_json
    # arch → {"max_epochs"/"grace_period"/"image_size": n}: a preset's own schedule for one architecture (the
    # scratch CNN needs more epochs than a fine-tuned backbone, and pays for them with smaller faces);
    # --max-epochs / --grace-period / --image-size replace it for every architecture
    arch_schedule: dict[str, dict[str, int]] = field(default_factory=dict)
    # labelled sets scored out of domain after the retraining (search.stages.ood), os.pathsep-joined; never used for a choice
    ood: str = ""
    command: str = ""

    @property
    def root(self) -> Path:
        return Path(self.local_root)

    def experiment_dir(self, arch: str) -> str:
        """Tune's experiment of ``arch``'s search (``-retrain`` suffix: of its retraining)."""
        return f"{self.storage}/{self.name}/{arch}"

    def base_config(self, arch: str) -> dict[str, Any]:
        """The training config every trial of ``arch`` starts from, before the trial's sampled values."""
        values = {"arch": arch, "data_dir": self.data_dir, "image_size": self.image_size_for(arch),
                  "max_images": self.max_images, "epochs": self.epochs_for(arch), "seed": self.seed,
                  "cache_dir": self.cache_dir, "weights_path": self.weights, **self.overrides}
        return TrainConfig.from_dict(values).to_dict()

    def epochs_for(self, arch: str) -> int:
        """The most epochs a trial of ``arch`` runs (ASHA's max_t), and the epochs of its retraining."""
        return int(scheduled(self.arch_schedule, arch, "max_epochs", self.max_epochs))

    def image_size_for(self, arch: str) -> int:
        """The side in pixels of the faces ``arch`` trains and is scored on."""
        return int(scheduled(self.arch_schedule, arch, "image_size", self.image_size))

    def grace_for(self, arch: str) -> int:
        """Epochs before ASHA may stop a trial of ``arch``."""
        return int(scheduled(self.arch_schedule, arch, "grace_period", self.grace_period))

    def space_overrides_for(self, arch: str) -> dict[str, Any]:
        return {k: dist_from_json(v) for k, v in self.space_overrides.get(arch, {}).items()}

    @property
    def fixed(self) -> tuple[str, ...]:
        """Training fields ``--set`` fixed for every trial: left out of the search space."""
        return tuple(sorted(self.overrides))

    def space(self, arch: str) -> dict[str, Any]:
        """The space ``arch``'s trials are drawn from."""
        from search.hpo.tuning import arch_space  # imports Ray, which settings (read by the report) must not

        return arch_space(arch, self.space_overrides_for(arch), self.grace_for(arch), self.fixed)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["archs"] = list(self.archs)
        return out


def scheduled(arch_schedule: dict[str, dict[str, Any]], arch: str, key: str, default: Any) -> Any:
    """``key`` of ``arch``'s own schedule (``RunSettings.arch_schedule``), else the run's ``default``; the report
    reads saved settings through it too."""
    return arch_schedule.get(arch, {}).get(key, default)


def settings_path(root: Path) -> Path:
    return root / SETTINGS_FILE


# fields holding a path, made absolute: Ray Tune runs trials in other folders
PATH_FIELDS = ("data_dir", "cache_dir", "weights", "ood")


def _absolute(value: Any) -> str:
    """A path made absolute; several data sources (a list, or ``os.pathsep``-joined) each made absolute."""
    if isinstance(value, (list, tuple)) or os.pathsep in str(value):
        return join_sources(split_sources(value))
    return str(Path(value).expanduser().resolve())


def _flag(attr: str) -> str:
    return "--" + attr.replace("_", "-")


# argparse attribute → RunSettings field, for every flag that sets a field
FLAG_FIELDS = {"arch": "archs", "data": "data_dir", "ood": "ood", "preset": "preset", "top_k": "retrain_top_k",
               "seeds": "retrain_seeds", "num_samples": "num_samples", "max_epochs": "max_epochs",
               "grace_period": "grace_period", "reduction_factor": "reduction_factor", "image_size": "image_size",
               "max_images": "max_images", "scheduler": "scheduler", "cpus_per_trial": "cpus_per_trial",
               "gpus_per_trial": "gpus_per_trial", "concurrency": "concurrency", "max_failures": "max_failures",
               "address": "address", "seed": "seed", "cache_dir": "cache_dir", "weights": "weights",
               "budget": "budget_s"}
PRESET_KEYS = ("num_samples", "max_epochs", "grace_period", "reduction_factor", "image_size", "max_images",
               "retrain_top_k", "retrain_seeds", "budget_s")


def preset_values(name: str) -> dict[str, Any]:
    preset = PRESETS[name]
    values = {k: preset[k] for k in PRESET_KEYS}
    values["space_overrides"] = {arch: {k: dist_to_json(d) for k, d in space.items()}
                                 for arch, space in preset["space_overrides"].items()}
    values["arch_schedule"] = {arch: dict(v) for arch, v in preset.get("arch_schedule", {}).items()}
    return values


def _locate(args: argparse.Namespace, preset: str) -> tuple[str, str, Path]:
    name = args.name or preset
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"--name {name!r} is not a folder name; use letters, digits, '-' or '_'")
    storage_arg = args.storage_path or "runs"
    if "://" in storage_arg:
        return name, storage_arg.rstrip("/"), (Path("runs") / name).resolve()
    storage = str(Path(storage_arg).expanduser().resolve())
    return name, storage, Path(storage) / name


def check_writable(folder: Path, flag: str = "--storage-path") -> None:
    """Refuse, before anything is written, a folder that cannot be created or written to."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is a file")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UsageError(f"cannot write the experiment to {folder} ({getattr(err, 'strerror', None) or err}); "
                         f"pass a writable {flag}") from None


def load_saved(root: Path) -> dict[str, Any]:
    """The settings file of the experiment at ``root``, as saved."""
    path = settings_path(root)
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"cannot read the experiment's settings {path} ({err}); restore the file or start a new "
                         "experiment with --name NEW") from None
    known = {f.name for f in dataclasses.fields(RunSettings)}
    missing = sorted(known - set(saved["settings"] if "settings" in saved else {}))
    if "settings" not in saved or missing:
        raise UsageError(f"{path} was written by an older version (missing {', '.join(missing) or 'settings'}); "
                         "start a new experiment with --name NEW")
    return saved


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """Flags given on the command line, as RunSettings fields (a flag left at None was not given)."""
    given = {}
    for attr, key in FLAG_FIELDS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        if key == "archs":
            value = tuple(ARCHS) if value == "both" else (value,)
        elif key == "budget_s":
            try:
                value = parse_budget(value)
            except ValueError as err:
                raise UsageError(str(err)) from None
        elif key in PATH_FIELDS:
            value = _absolute(value)
        given[key] = value
    return given


def resolve(args: argparse.Namespace) -> RunSettings:
    """Merge preset → saved experiment (on ``--resume`` and later stages) → flags → ``--set`` once, and validate.

    Raises ``UsageError`` with one line naming the fix. Reads the file system but writes nothing.
    """
    preset = args.preset or default_preset(args)
    name, storage, root = _locate(args, preset)
    saved = _saved_settings(args, name, root)
    if saved is not None:
        preset = saved["preset"]
    values: dict[str, Any] = {**_field_defaults(), "archs": tuple(ARCHS), **preset_values(preset)}
    origin = {k: f"preset {preset}" for k in values}
    if saved is not None:
        values.update({k: v for k, v in saved.items() if k not in ("name", "storage", "local_root", "command")})
        values["archs"] = tuple(saved["archs"])
        origin.update({k: "the saved experiment" for k in saved})
    flags, sets = _flags_and_sets(args, origin)
    if saved is not None:
        _check_against_saved(name, saved, flags, sets, origin)
    values.update(flags)
    values["overrides"] = {**values["overrides"], **sets}
    if saved is None:
        # a schedule flag is meant for every architecture: it replaces the preset's per-architecture value
        given = {k for k in ("max_epochs", "grace_period", "image_size") if k in flags}
        values["arch_schedule"] = {arch: {k: v for k, v in sched.items() if k not in given}
                                   for arch, sched in values["arch_schedule"].items()}
    if values.get("data_dir") is None:
        if not os.environ.get("UTKFACE_DIR"):
            raise UsageError("no data folder given: pass --data DIR or set UTKFACE_DIR to a folder of UTKFace crops")
        values["data_dir"] = _absolute(os.environ["UTKFACE_DIR"])
        origin["data_dir"] = "UTKFACE_DIR"
    s = RunSettings(name=name, storage=storage, local_root=str(root), preset=preset,
                    command=shlex.join([sys.executable] + sys.argv),
                    **{k: v for k, v in values.items() if k not in ("preset", "command")})
    _validate(s, origin)
    if "://" not in storage:
        check_writable(root)
    return s


def _saved_settings(args: argparse.Namespace, name: str, root: Path) -> dict[str, Any] | None:
    """The experiment's saved settings on ``--resume`` and later stages (which need them), else None."""
    later = args.stage in ("retrain", "report")
    if not (args.resume or later):
        return None
    if not settings_path(root).is_file():
        fix = "drop --resume to start it" if args.resume and not later else "run the search stage first"
        raise UsageError(f"no experiment {name!r} at {root}; {fix}, or fix --name/--storage-path")
    return load_saved(root)["settings"]


def _flags_and_sets(args: argparse.Namespace, origin: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flags given, with the ``--set`` values of flag-owned fields folded into them, and the other ``--set``
    values; records where each value came from in ``origin``."""
    flags = _given(args)
    try:
        sets = parse_overrides(args.set or [])
        for key, why in SET_REFUSED.items():
            if key in sets:
                raise UsageError(f"--set {key}: {why}")
        sets = coerce_values(sets)
    except (KeyError, ValueError) as err:
        raise UsageError(str(err) if str(err).startswith("--set") else f"--set: {err}") from None
    for key, target in SET_OWNED.items():
        if key not in sets:
            continue
        value = sets.pop(key)
        if target in PATH_FIELDS and value is not None:
            value = _absolute(value)
        if target in flags and flags[target] != value:
            raise UsageError(f"--set {key}={value} contradicts {_flag(_attr(target))} {flags[target]}; give one of them")
        flags[target] = value
        origin[target] = f"--set {key}"
    for target in flags:
        origin.setdefault(target, "")
        if not origin[target].startswith("--set"):
            origin[target] = _flag(_attr(target))
    return flags, sets


def _check_against_saved(name: str, saved: dict[str, Any], flags: dict[str, Any], sets: dict[str, Any],
                         origin: dict[str, str]) -> None:
    """Refuse a flag or ``--set`` value that contradicts the saved experiment, except where things live and how
    the work is spread (``MAY_CHANGE``)."""
    if "archs" in flags:
        extra = sorted(set(flags["archs"]) - set(saved["archs"]))
        if extra:
            raise UsageError(f"--arch {'both' if len(flags['archs']) > 1 else flags['archs'][0]}: experiment "
                             f"{name!r} has no {' or '.join(extra)} search (it has {', '.join(saved['archs'])}); "
                             "start a new experiment with --name NEW for it")
    for key, value in flags.items():
        if key in MAY_CHANGE or key == "archs" or value == saved.get(key):
            continue
        raise UsageError(f"{origin[key]} {_show(value)} contradicts the saved experiment {name!r} "
                         f"({key} {_show(saved.get(key))}); drop the flag, or start a new experiment with --name NEW")
    changed = {k: v for k, v in sets.items() if saved["overrides"].get(k, _MISSING) != v}
    if changed:
        k, v = next(iter(changed.items()))
        raise UsageError(f"--set {k}={v} contradicts the saved experiment {name!r} (its --set values: "
                         f"{saved['overrides'] or 'none'}); drop it, or start a new experiment with --name NEW")


_MISSING = object()


def _field_defaults() -> dict[str, Any]:
    """RunSettings' own defaults (the values no preset, saved experiment or flag sets)."""
    out = {}
    for f in dataclasses.fields(RunSettings):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _attr(key: str) -> str:
    return next(a for a, k in FLAG_FIELDS.items() if k == key)


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (tuple, list)):
        return "both" if tuple(value) == tuple(ARCHS) else ",".join(map(str, value))
    return str(value)


def source_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a data source (a non-empty folder or a labels CSV), or None."""
    if is_labels_file(path):
        return None if path.is_file() else "the labels file does not exist; pass --data with a folder or a CSV"
    if not path.is_dir():
        return "the data folder does not exist; pass --data DIR (a folder of UTKFace crops) or a labels CSV"
    try:
        return None if any(path.iterdir()) else "the data folder is empty; pass --data DIR with UTKFace crops in it"
    except PermissionError:
        return "the data folder cannot be listed (permission denied)"


def _validate(s: RunSettings, origin: dict[str, str]) -> None:
    def need(key: str, ok: bool, rule: str) -> None:
        if not ok:
            raise UsageError(f"{origin.get(key) or key} {_show(getattr(s, key))}: {rule}")

    for key in ("data_dir", "ood"):
        for source in split_sources(getattr(s, key)):
            rule = source_problem(Path(source))
            need(key, rule is None, f"{source}: {rule}")
    for size in {s.image_size} | {s.image_size_for(arch) for arch in s.archs}:
        try:
            check_image_size(size)
        except ValueError as err:
            need("image_size", False, str(err))
    need("max_images", s.max_images >= 0, "must be 0 (all images) or a positive count")
    need("num_samples", s.num_samples >= 1, "must be at least 1")
    need("max_epochs", s.max_epochs >= 1, "must be at least 1")
    need("grace_period", 1 <= s.grace_period <= s.max_epochs,
         f"must be between 1 and --max-epochs {s.max_epochs}; lower it or raise --max-epochs")
    for arch in (a for a in s.archs if a in s.arch_schedule):
        epochs, grace = s.epochs_for(arch), s.grace_for(arch)
        need("grace_period", epochs >= 1 and 1 <= grace <= epochs,
             f"{arch}'s schedule ({grace} of {epochs} epochs) is invalid; give --max-epochs and --grace-period")
    need("reduction_factor", s.reduction_factor >= 2, "must be at least 2")
    need("retrain_top_k", s.retrain_top_k >= 1, "must be at least 1")
    need("retrain_seeds", s.retrain_seeds >= 1, "must be at least 1")
    need("scheduler", s.scheduler in SCHEDULERS, f"valid: {', '.join(SCHEDULERS)}")
    need("cpus_per_trial", s.cpus_per_trial > 0, "must be positive")
    need("gpus_per_trial", s.gpus_per_trial is None or s.gpus_per_trial >= 0, "must be 0 or more")
    need("concurrency", s.concurrency is None or s.concurrency >= 1, "must be at least 1")
    need("max_failures", s.max_failures >= 0, "must be 0 or more")
    if s.budget_s is not None:
        least = min_budget_s(len(s.archs))
        need("budget_s", s.budget_s >= least, f"is shorter than the {format_duration(least)} that one trial and one "
             f"retraining run per architecture and the report need at the least; give --budget {format_duration(least)}"
             " or more")
    for arch in s.archs:
        try:
            s.base_config(arch)  # builds the arch's TrainConfig, which checks every field
        except (KeyError, ValueError) as err:
            raise UsageError(f"--set: {err}") from None


def save_new(s: RunSettings) -> None:
    """Write the settings of a new experiment (before any trial starts)."""
    payload = {"settings": s.to_json(), "created": time.strftime("%Y-%m-%d %H:%M:%S"), "resumes": []}
    write_json(settings_path(s.root), payload)


def record_resume(s: RunSettings, stage: str) -> None:
    """Append this invocation (command, stage, and any value it changed) to the experiment's settings file."""
    path = settings_path(s.root)
    payload = json.loads(path.read_text())
    saved = payload["settings"]
    changed = {k: getattr(s, k) for k in MAY_CHANGE if getattr(s, k) != saved.get(k)}
    payload["resumes"].append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "stage": stage, "command": s.command,
                               "archs": list(s.archs), "changed": changed})
    write_json(path, payload)
