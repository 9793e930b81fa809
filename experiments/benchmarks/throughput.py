"""Training throughput (images/second) of both architectures on whatever device is here, printed as JSON.

    python experiments/benchmarks/throughput.py [--image-size 128] [--batch-size 64] [--steps 20]

Times full training steps (augmentation, forward, backward, optimiser) on random uint8 images already on
the device, after warm-up steps, with the device synchronised before the clock is read.
"""
import os
import sys

if __name__ == "__main__" and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(os.path.dirname(sys.path[0]))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from data_utils.augment import AugmentStrength, augment_batch  # noqa: E402
from experiments.config import TrainConfig, parse_overrides  # noqa: E402
from experiments.train import loss_terms, make_optimizer, resolve_device, to_input  # noqa: E402
from models import build_model, count_parameters  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Training images/second for both architectures.")
    parser.add_argument("--arch", nargs="+", default=["scratch", "pretrained"], help="architectures to time")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per architecture")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. depth=4")
    return parser


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def time_arch(arch: str, args: argparse.Namespace, device: torch.device) -> dict:
    overrides = parse_overrides(args.set)
    cfg = TrainConfig.from_dict({"arch": arch, "image_size": args.image_size, "batch_size": args.batch_size,
                                 "unfreeze_epoch": 0, **overrides})
    model = build_model(cfg, load_weights=False).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = make_optimizer(model, cfg)
    aug = AugmentStrength(cfg.aug_flip, cfg.aug_rotate, cfg.aug_shift, cfg.aug_scale, cfg.aug_brightness)
    images = torch.randint(0, 256, (cfg.batch_size * 4, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
    ages = torch.rand(images.shape[0], device=device) * 80 + 1
    genders = (torch.rand(images.shape[0], device=device) > 0.5).float()

    def step(i: int) -> None:
        sl = slice((i % 4) * cfg.batch_size, (i % 4 + 1) * cfg.batch_size)
        x = augment_batch(to_input(images[sl], cuda), aug)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            age, logit = model(x)
        loss, _, _ = loss_terms(age, logit, ages[sl], genders[sl], cfg.age_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(args.warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"arch": arch, "parameters": count_parameters(model), "image_size": cfg.image_size,
            "batch_size": cfg.batch_size, "depth": cfg.depth, "base_width": cfg.base_width,
            "steps": args.steps, "seconds": round(seconds, 3),
            "train_images_per_second": round(args.steps * cfg.batch_size / seconds, 1)}


def main(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    results = [time_arch(arch, args, device) for arch in args.arch]
    print(json.dumps({"device": device_name(device), "torch": torch.__version__, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
