"""Which device a run trains on, and in what precision and memory layout.

``precision: auto`` trains under bf16 autocast where the hardware computes bf16 natively — CUDA GPUs that
support it, and CPUs with AVX512-BF16 or AMX-BF16 (read from the CPU's flags, not assumed) — and in fp32
elsewhere, where bf16 would be emulated and slower. One exception: on a CPU, the pretrained MobileNetV2 (depthwise
convolutions) trains slower in bf16 than in fp32 channels_last at small sizes, so ``auto`` keeps it in fp32 below
``CPU_BF16_FROM_SIZE``. Convolutions run in channels_last everywhere: faster than NCHW for both architectures on
the CPU (experiments/benchmarks/throughput.py).
"""
from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# architecture → image size below which auto keeps it in fp32 on a CPU: its depthwise convolutions run faster in
# fp32 channels_last than in bf16 at small sizes (experiments/benchmarks/throughput.py)
CPU_BF16_FROM_SIZE = {"pretrained": 128}
# device type → faces per forward pass when scoring (eval mode; flip TTA doubles the batch). On a CPU a small batch's
# activations stay in the caches, and 32 is close to the fastest size for both architectures (throughput.py
# --scoring); GPUs want large batches
EVAL_BATCH_SIZE = {"cpu": 32, "cuda": 512}


def resolve_device(name: str) -> torch.device:
    """'auto' → the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return device


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of this machine's CPU, from /proc/cpuinfo; empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return name or platform.processor() or platform.machine(), frozenset(flags)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 in its flags)."""
    return any(flag in _cpuinfo()[1] for flag in NATIVE_BF16_FLAGS)


def device_name(device: torch.device) -> str:
    """The card's or the CPU's name, for logs and benchmark JSON."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpuinfo()[0]


@dataclass(frozen=True)
class Precision:
    """How a run computes: autocast dtype (None = fp32) and memory layout, on one device type."""

    device_type: str
    dtype: torch.dtype | None
    channels_last: bool

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of a forward pass (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self, device: torch.device) -> str:
        return f"{self.name} on {device_name(device)}{', channels_last' if self.channels_last else ''}"


def resolve_precision(name: str, device: torch.device, channels_last: bool = True, arch: str | None = None,
                      image_size: int | None = None) -> Precision:
    """The precision a config's ``precision`` field means for ``arch`` at ``image_size`` on ``device`` (see the
    module's docstring)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = cpu_has_native_bf16() and (image_size or 0) >= CPU_BF16_FROM_SIZE.get(arch, 0)
        name = "bf16" if native else "fp32"
    return Precision(device.type, torch.bfloat16 if name == "bf16" else None, channels_last)


def eval_batch_size(device: torch.device) -> int:
    """Faces per forward pass when scoring on ``device`` (``EVAL_BATCH_SIZE``; 512 on other device types)."""
    return EVAL_BATCH_SIZE.get(device.type, 512)


def fp32_nchw(device: torch.device) -> Precision:
    """The layout and precision every run used before precision was chosen per device (for benchmarks)."""
    return Precision(device.type, None, False)
