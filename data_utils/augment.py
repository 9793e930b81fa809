"""Batch augmentation on the batch's own device: one affine warp, one brightness scale and, optionally, one
erased rectangle per image.

Everything is tensor arithmetic over the whole batch (no per-image Python loop), so on a GPU it costs a
single ``grid_sample``. Strengths follow the study's list: horizontal flip, rotation, shift, scale
(zoom) and brightness; random erasing (Zhong et al., 2017) is the one addition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentStrength:
    flip: float = 0.5  # probability of a horizontal flip
    rotate: float = 10.0  # max rotation, degrees either way
    shift: float = 0.1  # max translation, fraction of the image side
    scale: float = 0.1  # max zoom in or out, fraction
    brightness: float = 0.2  # max brightness change, fraction
    erase: float = 0.0  # probability of replacing one rectangle (2–40% of the face) with noise

    def __post_init__(self):
        for name in ("flip", "rotate", "shift", "scale", "brightness", "erase"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation strength {name} must be >= 0, got {getattr(self, name)}")
        if self.flip > 1 or self.erase > 1 or self.scale >= 1 or self.brightness >= 1:
            raise ValueError("augmentation flip and erase must be <= 1, scale and brightness < 1")

    @property
    def geometric(self) -> bool:
        return self.rotate > 0 or self.shift > 0 or self.scale > 0


def augment_batch(x: torch.Tensor, strength: AugmentStrength) -> torch.Tensor:
    """Augment a float batch B×3×H×W with values in [0, 1]; returns a new batch, same shape, values in [0, 1]."""
    b = x.shape[0]
    dev = x.device
    flip = torch.rand(b, device=dev) < strength.flip
    if strength.geometric:
        angle = (torch.rand(b, device=dev) * 2 - 1) * math.radians(strength.rotate)
        zoom = 1 + (torch.rand(b, device=dev) * 2 - 1) * strength.scale
        # affine_grid works in [-1, 1] coordinates, so a shift of s image sides is 2s there
        shift = (torch.rand(b, 2, device=dev) * 2 - 1) * 2 * strength.shift
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        sign = torch.where(flip, -1.0, 1.0).to(cos.dtype)
        theta = torch.stack([
            torch.stack([cos * sign, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * sign, cos, shift[:, 1]], dim=1),
        ], dim=1).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # border padding repeats edge pixels, like the study's 'nearest' fill, instead of black corners
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    elif strength.flip > 0:
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    if strength.brightness > 0:
        factor = 1 + (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) * 2 - 1) * strength.brightness
        x = (x * factor).clamp_(0, 1)
    if strength.erase > 0:
        x = erase_rectangles(x, strength.erase)
    return x


# random erasing's published ranges: the rectangle covers 2–40% of the image, aspect ratio 0.3–3.3
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def erase_rectangles(x: torch.Tensor, p: float) -> torch.Tensor:
    """With probability ``p`` per image, fill one random rectangle of B×C×H×W ``x`` with uniform noise in [0, 1].

    The occluders a face crop meets (hands, glasses, hair, a neighbour's shoulder) hide a part of the face; the
    noise fill, rather than a constant, keeps the network from learning one occluder colour."""
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(*ERASE_AREA) * (h * w)
    log_aspect = torch.empty(b, device=dev).uniform_(math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]))
    eh = (area * log_aspect.exp()).sqrt().clamp(1, h)
    ew = (area / log_aspect.exp()).sqrt().clamp(1, w)
    top = torch.rand(b, device=dev) * (h - eh)
    left = torch.rand(b, device=dev) * (w - ew)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
              & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)))
    inside &= (torch.rand(b, device=dev) < p).view(b, 1, 1)
    return torch.where(inside.unsqueeze(1), torch.rand_like(x), x)
