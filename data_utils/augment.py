"""Batch augmentation on the batch's own device: one affine warp, one brightness scale and, optionally, one
erased rectangle and the photometric changes that photos bring (colour, greyscale, blur, JPEG) per image.

Everything is tensor arithmetic over the whole batch (no per-image Python loop), so on a GPU it costs a
single ``grid_sample`` and a few convolutions. Strengths follow the study's list: horizontal flip, rotation, shift,
scale (zoom) and brightness; random erasing (Zhong et al., 2017) and the photometric set are additions. JPEG
re-compression is done as JPEG's lossy steps are: YCbCr, 2× chroma subsampling, 8×8 DCT and quantization by the
standard tables at a random quality (entropy coding, the rest of a JPEG encoder, is lossless).
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
    color: float = 0.0  # max change of saturation and contrast, fraction
    grey: float = 0.0  # probability of a greyscale face
    blur: float = 0.0  # probability of a Gaussian blur (sigma BLUR_SIGMA of the side)
    jpeg: float = 0.0  # probability of a JPEG re-compression at a quality in JPEG_QUALITY

    def __post_init__(self):
        for name in ("flip", "rotate", "shift", "scale", "brightness", "erase", "color", "grey", "blur", "jpeg"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation strength {name} must be >= 0, got {getattr(self, name)}")
        if max(self.flip, self.erase, self.grey, self.blur, self.jpeg) > 1 or self.scale >= 1 or self.brightness >= 1 \
                or self.color >= 1:
            raise ValueError("augmentation flip, erase, grey, blur and jpeg are probabilities (<= 1); scale, "
                             "brightness and color must be < 1")

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
    if strength.color > 0:
        x = jitter_color(x, strength.color)
    if strength.grey > 0:
        x = some(x, strength.grey, lambda part: greyscale(part).expand_as(part))
    if strength.blur > 0:
        x = some(x, strength.blur, blur)
    if strength.jpeg > 0:
        x = some(x, strength.jpeg, recompress)
    if strength.erase > 0:
        x = erase_rectangles(x, strength.erase)
    return x


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as JPEG and PIL's "L" mode weigh the channels


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """B×1×H×W luminance of B×3×H×W ``x``."""
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def jitter_color(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Scale each image's saturation (distance from its grey) and contrast (distance from its mean luminance) by
    independent factors in [1 − strength, 1 + strength]; the mean luminance is kept."""
    b = x.shape[0]
    sat = 1 + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) * 2 - 1) * strength
    con = 1 + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) * 2 - 1) * strength
    grey = greyscale(x)
    x = grey + (x - grey) * sat
    mean = grey.mean(dim=(2, 3), keepdim=True)
    return (mean + (x - mean) * con).clamp(0, 1)


BLUR_SIGMA = (0.004, 0.015)  # of the image side: about 0.8–3 px on a 200 px crop, as a soft or resized photo is


def some(x: torch.Tensor, p: float, change) -> torch.Tensor:
    """``x`` with ``change`` applied to each image with probability ``p`` (computed for those images only)."""
    picked = torch.rand(x.shape[0], device=x.device) < p
    if not picked.any():
        return x
    out = x.clone()
    out[picked] = change(x[picked])
    return out


def blur(x: torch.Tensor) -> torch.Tensor:
    """A separable Gaussian blur of each image, at a random sigma (``BLUR_SIGMA`` of the side)."""
    b, c, h, w = x.shape
    sigma = torch.empty(b, device=x.device).uniform_(*BLUR_SIGMA) * h
    radius = max(1, math.ceil(3 * BLUR_SIGMA[1] * h))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B·C)×K, one per channel
    flat = x.reshape(1, b * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(flat, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)


JPEG_QUALITY = (30, 90)
# the JPEG standard's example quantization tables (Annex K), luminance and chrominance, row by row
_LUMA_Q = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22,
           29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103,
           121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA_Q = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
             47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B×8×8 luminance and chrominance tables at each quality (1–100), scaled as libjpeg scales them."""
    q = quality.clamp(1, 100).to(torch.float32).view(-1, 1, 1)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    tables = []
    for base in (_LUMA_Q, _CHROMA_Q):
        t = torch.tensor(base, dtype=torch.float32, device=quality.device).view(1, 8, 8)
        tables.append(((t * scale + 50) / 100).floor().clamp(1, 255))
    return tables[0], tables[1]


def _dct_matrix(device, dtype) -> torch.Tensor:
    n = torch.arange(8, device=device, dtype=torch.float64)
    m = torch.cos((2 * n.view(1, -1) + 1) * n.view(-1, 1) * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(dtype)


def _quantize(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Round-trip B×H×W ``plane`` (0–255, H and W multiples of 8) through the 8×8 DCT quantized by B×8×8 ``table``."""
    b, h, w = plane.shape
    d = _dct_matrix(plane.device, plane.dtype)
    blocks = (plane - 128).view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coeffs = d @ blocks @ d.T
    t = table.to(plane.dtype).view(b, 1, 1, 8, 8)
    blocks = d.T @ (torch.round(coeffs / t) * t) @ d
    return blocks.permute(0, 1, 3, 2, 4).reshape(b, h, w) + 128


def recompress(x: torch.Tensor) -> torch.Tensor:
    """JPEG's lossy steps on each image, at a random quality in ``JPEG_QUALITY``."""
    quality = torch.randint(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, (x.shape[0],), device=x.device)
    return jpeg_round_trip(x, quality)


def jpeg_round_trip(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """B×3×H×W ``x`` in [0, 1] as a JPEG of each image's ``quality`` would decode (4:2:0 chroma)."""
    b, _, h, w = x.shape
    ph, pw = -h % 16, -w % 16
    rgb = F.pad(x.float() * 255, (0, pw, 0, ph), mode="replicate")
    r, g, bl = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * bl
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * bl
    luma_t, chroma_t = quant_tables(quality)
    y = _quantize(y, luma_t)
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
    chroma = torch.stack([_quantize(chroma[:, i], chroma_t) for i in range(2)], 1)
    cb, cr = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False).unbind(1)
    out = torch.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                       y + 1.772 * (cb - 128)], 1)
    return (out[:, :, :h, :w] / 255).clamp(0, 1).to(x.dtype)


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
