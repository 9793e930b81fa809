"""How many trials share one GPU by default: from the GPU's memory and the measured peak of one training step.

These models use a small part of a data-centre GPU (a step at batch 64 is bound by kernel launches, not by
memory or arithmetic), so one trial per GPU leaves it mostly idle. With no ``--gpus-per-trial``, the search
measures one training step of the largest configuration its space can draw, on a GPU of the cluster, and gives
each trial the smallest share in ``SHARES`` whose memory holds that peak with ``HEADROOM``; each trial is
then capped to its share of the GPU's memory (``search.hpo.trainable.limit_resources``).
"""
from __future__ import annotations

from typing import Any

from search.hpo.spaces import Categorical, Float, Int

SHARES = (1.0, 0.5, 0.25, 0.125)  # at most 8 trials per GPU: beyond that they wait on each other's launches
HEADROOM = 1.5  # the peak of one step × this, for allocator fragmentation and evaluation batches
CONTEXT_BYTES = 600 * 2**20  # what each process's CUDA context takes beside its tensors


def largest_config(base: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """``base`` with every integer or categorical parameter of ``space`` at its largest value (the memory peak)."""
    out = dict(base)
    for name, dist in space.items():
        if isinstance(dist, Categorical) and all(isinstance(c, (int, float)) for c in dist.choices):
            out[name] = max(dist.choices)
        elif isinstance(dist, Int) and isinstance(dist.high, int):
            out[name] = dist.high
        elif isinstance(dist, Float):
            continue  # rates and strengths do not change memory
    return out


def gpu_share(peak_bytes: int, total_bytes: int) -> float:
    """The smallest share of a GPU of ``total_bytes`` that holds a trial whose step peaks at ``peak_bytes``."""
    need = peak_bytes * HEADROOM + CONTEXT_BYTES
    fitting = [share for share in SHARES if share * total_bytes >= need]
    return min(fitting) if fitting else 1.0


def measure_step_memory(config: dict[str, Any], imagenet_state: dict | None = None) -> tuple[int, int, str]:
    """(peak bytes of two training steps of ``config``, the GPU's total bytes, its name), on this process's GPU."""
    import torch

    from data_utils.dataset import Faces
    from data_utils.scan import ScanReport
    from experiments.config import TrainConfig
    from experiments.train import Trainer

    cfg = TrainConfig.from_dict({**config, "device": "cuda", "unfreeze_epoch": 0, "epochs": 1})
    n = cfg.batch_size * 2
    images = torch.randint(0, 256, (n, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    faces = Faces(images, torch.randint(1, 90, (n,)), torch.randint(0, 2, (n,)), [str(i) for i in range(n)],
                  [str(i) for i in range(n)], ScanReport(""))
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, faces, faces.subset(list(range(cfg.batch_size))), imagenet_state=imagenet_state)
    next(trainer.epochs())
    peak = torch.cuda.max_memory_allocated()
    device = torch.cuda.current_device()
    return int(peak), int(torch.cuda.get_device_properties(device).total_memory), torch.cuda.get_device_name(device)
