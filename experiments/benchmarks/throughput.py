"""Training throughput (images/second) of both architectures, printed as JSON.

    python experiments/benchmarks/throughput.py [--image-size 128] [--batch-size 64] [--steps 20]
    python experiments/benchmarks/throughput.py --threads-vs-trials      # on a CPU: 1 trial × N threads or N × 1
    python experiments/benchmarks/throughput.py --scoring --threads 1    # faces/s of scoring per eval batch size

Times full training steps (augmentation, forward, backward, optimiser) on random uint8 images already on
the device, after warm-up steps, with the device synchronised before the clock is read. Every architecture
is timed in fp32 NCHW (the path before precision was chosen per device) and in the resolved default
(``precision: auto`` and channels_last), interleaved in one run, so the speedup is a ratio measured under the
same machine load. On a GPU it also reports each step's peak memory. ``--scoring`` times ``predict`` instead (eval
mode, the test-time views as configured, the resolved default precision) on a validation split's worth of
faces at each of ``--eval-batches``, interleaved the same way, against the device's ``eval_batch_size``.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

from data_utils.augment import augment_batch
from experiments.config import TrainConfig, parse_overrides
from experiments.device import Precision, device_name, eval_batch_size, fp32_nchw, resolve_device, resolve_precision
from experiments.train import loss_terms, make_optimizer, predict, to_input
from models import build_model, count_parameters


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Training images/second for both architectures.")
    parser.add_argument("--arch", nargs="+", default=["scratch", "pretrained"], help="architectures to time")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per architecture and variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="variants alternate this many times (min is kept)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--only-default", action="store_true", help="time the resolved default only")
    parser.add_argument("--threads-vs-trials", action="store_true",
                        help="CPU: N concurrent 1-thread processes against one N-thread process (N = cores)")
    parser.add_argument("--scoring", action="store_true", help="time scoring (predict) per eval batch size instead")
    parser.add_argument("--eval-batches", type=int, nargs="+", default=[8, 16, 32, 64, 128, 512],
                        help="--scoring: faces per forward pass to compare")
    parser.add_argument("--faces", type=int, default=747, help="--scoring: faces scored per timing (a validation split)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. depth=4")
    return parser


class Step:
    """One architecture's model, optimiser and data in one precision; ``run(n)`` times n training steps."""

    def __init__(self, cfg: TrainConfig, device: torch.device, precision: Precision):
        self.cfg, self.device, self.precision = cfg, device, precision
        torch.manual_seed(0)
        self.model = build_model(cfg, load_weights=False).to(device)
        if precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.opt = make_optimizer(self.model, cfg)
        self.aug = cfg.augmentation()
        n = cfg.batch_size * 4
        self.images = torch.randint(0, 256, (n, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
        self.ages = torch.rand(n, device=device) * 80 + 1
        self.genders = (torch.rand(n, device=device) > 0.5).float()
        self.i = 0

    def step(self) -> None:
        b = self.cfg.batch_size
        sl = slice((self.i % 4) * b, (self.i % 4 + 1) * b)
        self.i += 1
        x = augment_batch(to_input(self.images[sl], False), self.aug)
        if self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            age, logit = self.model(x)
        loss, _, _ = loss_terms(age, logit, self.ages[sl], self.genders[sl], self.cfg.age_loss_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def config_for(arch: str, args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict({"arch": arch, "image_size": args.image_size, "batch_size": args.batch_size,
                                  "unfreeze_epoch": 0, **parse_overrides(args.set)})


def time_arch(arch: str, args: argparse.Namespace, device: torch.device) -> dict:
    cfg = config_for(arch, args)
    variants = {"default": resolve_precision(cfg.precision, device, cfg.channels_last, cfg.arch,
                                                    cfg.image_size)}
    if not args.only_default:
        variants = {"fp32_nchw": fp32_nchw(device), **variants}
    steps = {name: Step(cfg, device, p) for name, p in variants.items()}
    peak = {}
    for name, s in steps.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        s.run(args.warmup)
        if device.type == "cuda":
            peak[name] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    best = {name: float("inf") for name in steps}
    for _ in range(args.rounds):  # interleaved, so both variants see the same machine load
        for name, s in steps.items():
            best[name] = min(best[name], s.run(args.steps))
    out = {"arch": arch, "parameters": count_parameters(steps["default"].model), "image_size": cfg.image_size,
           "batch_size": cfg.batch_size, "depth": cfg.depth, "base_width": cfg.base_width, "steps": args.steps,
           "default": variants["default"].describe(device)}
    for name, seconds in best.items():
        out[f"{name}_images_per_second"] = round(args.steps * cfg.batch_size / seconds, 1)
        if name in peak:
            out[f"{name}_peak_memory_mib"] = peak[name]
    return out


def time_scoring(arch: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Faces/s of ``predict`` at each of ``args.eval_batches`` (best of ``args.rounds`` interleaved rounds)."""
    cfg = config_for(arch, args)
    precision = resolve_precision(cfg.precision, device, cfg.channels_last, cfg.arch, cfg.image_size)
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    faces = torch.randint(0, 256, (args.faces, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
    best = dict.fromkeys(args.eval_batches, float("inf"))
    predict(model, faces[:max(args.eval_batches)], precision=precision)  # warm-up
    for _ in range(args.rounds):
        for batch in args.eval_batches:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            predict(model, faces, batch_size=batch, precision=precision)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[batch] = min(best[batch], time.perf_counter() - start)
    rates = {str(b): round(args.faces / s, 1) for b, s in best.items()}
    fastest = max(rates, key=rates.get)
    out = {"arch": arch, "image_size": cfg.image_size, "views": len(model.views(faces[:1].float())),
           "default": precision.describe(device),
           "faces": args.faces, "faces_per_second": rates, "fastest_batch": int(fastest),
           "eval_batch_size": eval_batch_size(device)}
    if str(out["eval_batch_size"]) in rates and "512" in rates:
        out["eval_batch_size_over_512"] = round(rates[str(out["eval_batch_size"])] / rates["512"], 2)
    return out


def threads_vs_trials(args: argparse.Namespace) -> dict:
    """Aggregate img/s of one process with all cores' threads against one 1-thread process per core at once."""
    cores = os.cpu_count() or 1
    cmd = [sys.executable, os.path.abspath(__file__), "--only-default", "--rounds", "1", "--image-size",
           str(args.image_size), "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--device", "cpu",
           "--arch", *args.arch, "--set", *args.set]
    runs = {}
    for label, procs, threads in (("one_trial_all_threads", 1, cores), ("one_trial_per_core", cores, 1)):
        started = [subprocess.Popen(cmd + ["--threads", str(threads)], stdout=subprocess.PIPE, text=True)
                   for _ in range(procs)]
        outs = [json.loads(p.communicate()[0]) for p in started]
        runs[label] = {r["arch"]: round(sum(o["results"][i]["default_images_per_second"] for o in outs), 1)
                       for i, r in enumerate(outs[0]["results"])}
    ratio = {a: round(runs["one_trial_per_core"][a] / runs["one_trial_all_threads"][a], 2) for a in args.arch}
    return {"cores": cores, "aggregate_images_per_second": runs, "per_core_over_all_threads": ratio}


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = {"device": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.threads_vs_trials:
        out.update(threads_vs_trials(args))
        print(json.dumps(out, indent=2))
        return 0
    if args.scoring:
        out["results"] = [time_scoring(arch, args, device) for arch in args.arch]
        print(json.dumps(out, indent=2))
        return 0
    results = [time_arch(arch, args, device) for arch in args.arch]
    out["results"] = results
    if not args.only_default:
        out["speedup_vs_fp32_nchw"] = {r["arch"]: round(r["default_images_per_second"] / r["fp32_nchw_images_per_second"], 2)
                                       for r in results}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
