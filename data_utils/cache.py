"""Decode face JPEGs once into a uint8 N×3×S×S tensor cache.

The cache file is keyed by the content of the file list (each file's sha256 and label) and the image size,
so renaming a folder or adding a file gives a new key, and a rebuilt folder with the same bytes reuses the
old one. It is written atomically (temp file + ``os.replace``) under a file lock, so concurrent trials that
ask for the same cache build it once and never read a half-written file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image, UnidentifiedImageError

from data_utils.scan import FaceFile

CACHE_VERSION = 1
NATIVE_SIZE = (200, 200)  # UTKFace's aligned-and-cropped faces
# below 16 px a face is a few blobs; above 512 px the 200 px crops are only upsampled while memory grows as S²
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512
MAX_PIXELS = 80_000_000  # a larger image is refused (counted "too_large"), not decoded into gigabytes


def check_image_size(size: int) -> None:
    """Raise ``ValueError`` unless ``size`` is a trainable image size."""
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels "
                         f"(the crops are {NATIVE_SIZE[0]} px), got {size}")


class DecodeError(ValueError):
    """A file that is not a decodable image; ``reason`` is the skip counter's key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def default_cache_dir() -> Path:
    """``$FACETUNE_CACHE``, else ``$XDG_CACHE_HOME/facetune``, else ``~/.cache/facetune``."""
    if os.environ.get("FACETUNE_CACHE"):
        return Path(os.environ["FACETUNE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "facetune"


def open_image(data: bytes) -> Image.Image:
    """Open image bytes (the pixels are decoded later, by ``load``); ``DecodeError`` names the skip reason.

    One pixel limit for every image the project reads, crop or photo: a larger one is ``too_large``, whether PIL's
    own decompression-bomb check or ``MAX_PIXELS`` catches it.
    """
    if not data:
        raise DecodeError("empty_file", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides, below
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise DecodeError("too_large", f"over the {MAX_PIXELS:,} pixels allowed: {err}") from err
    except UnidentifiedImageError as err:
        raise DecodeError("not_an_image", f"not an image: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DecodeError("corrupt_image", f"corrupt or truncated image: {err}") from err
    if img.width * img.height > MAX_PIXELS:
        raise DecodeError("too_large", f"{img.width}×{img.height} pixels is over the {MAX_PIXELS:,} allowed")
    return img


def load(img: Image.Image) -> Image.Image:
    """Decode an opened image's pixels; a truncated or corrupt file is ``DecodeError("corrupt_image")``."""
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DecodeError("corrupt_image", f"corrupt or truncated image: {err}") from err
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB with 8 bits a channel. A 16-bit (``I;16``), 32-bit integer (``I``) or float (``F``) image is scaled
    from its depth's range to 0-255 first: PIL's own conversion clips it, turning most of it white."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        if img.mode.startswith("I;16"):
            top = 65535.0
        elif img.mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
        img = Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_face(data: bytes, size: int) -> tuple[torch.Tensor, list[str]]:
    """Decode image bytes to a uint8 3×size×size RGB tensor, with notes on any conversion done.

    Non-RGB modes are converted to RGB (``to_rgb``); non-square images are centre-cropped to a square; every image
    is resized to ``size`` with PIL's antialiased bilinear filter. Training, export and prediction all use
    this one function, so an image is prepared the same way everywhere.
    """
    img = open_image(data)
    original_size = img.size
    # draft lets the JPEG decoder skip work at a reduced scale when the target is much smaller
    img.draft("RGB", (size, size))
    img = load(img)
    notes = []
    if img.mode != "RGB":
        notes.append(f"mode_{img.mode}_to_RGB")
        img = to_rgb(img)
    w, h = img.size
    if original_size[0] != original_size[1]:
        notes.append("non_square_center_cropped")
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    elif original_size != NATIVE_SIZE:
        notes.append("odd_size_resized")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    array = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return array.permute(2, 0, 1).contiguous(), notes


def read_file(path: str | os.PathLike) -> bytes:
    """A file's bytes; a folder is ``DecodeError("not_a_file")``, a file that cannot be read ``unreadable_file``."""
    if os.path.isdir(path):
        raise DecodeError("not_a_file", "a folder, not an image file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise DecodeError("unreadable_file", f"cannot read: {err}") from err


def cache_key(files: list[FaceFile], size: int) -> str:
    """Content key of a file list at one image size."""
    listing = [(f.sha256, f.age, f.gender, *([list(f.age_range)] if f.age_range else []))
               for f in sorted(files, key=lambda f: f.sha256)]
    payload = json.dumps({"v": CACHE_VERSION, "size": size, "files": listing}).encode()
    return hashlib.sha256(payload).hexdigest()[:20]


def decode_workers() -> int:
    """Threads for decoding: PIL releases the GIL while it decodes, so one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def decode_file(path: str | os.PathLike, size: int) -> tuple[torch.Tensor | None, list[str], str | None]:
    """Read and decode one file: (tensor, conversion notes, None), or (None, [], skip reason)."""
    try:
        tensor, notes = decode_face(read_file(path), size)
        return tensor, notes, None
    except DecodeError as err:
        return None, [], err.reason


def build_cache(files: list[FaceFile], size: int) -> dict:
    """Decode ``files`` (threads: PIL releases the GIL while decoding) into the cache's dict form."""
    with ThreadPoolExecutor(decode_workers()) as pool:
        results = list(pool.map(lambda f: decode_file(f.path, size), files))
    kept, skipped, converted = [], {}, Counter()
    for f, (tensor, notes, reason) in zip(files, results):
        if reason is not None:
            skipped.setdefault(reason, []).append(f.name)
            continue
        converted.update(notes)
        kept.append((f, tensor))
    images = torch.stack([t for _, t in kept]) if kept else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return {
        "version": CACHE_VERSION,
        "size": size,
        "images": images,
        "ages": torch.tensor([f.age for f, _ in kept], dtype=torch.int64),
        "genders": torch.tensor([f.gender for f, _ in kept], dtype=torch.int64),
        "names": [f.name for f, _ in kept],
        "sha256": [f.sha256 for f, _ in kept],
        "skipped": skipped,
        "converted": dict(converted),
    }


def read_cache(path: Path) -> dict | None:
    """The cache at ``path``, or None when it is missing, truncated, corrupt or of another version."""
    try:
        cache = torch.load(path, weights_only=True)
    except Exception:  # gone, or truncated or corrupt: torch raises RuntimeError, EOFError or an unpickling error
        return None
    try:
        n = cache["images"].shape[0]
        ok = (cache["version"] == CACHE_VERSION and cache["images"].dtype == torch.uint8
              and tuple(cache["images"].shape[1:]) == (3, cache["size"], cache["size"])
              and len(cache["ages"]) == len(cache["genders"]) == len(cache["names"]) == len(cache["sha256"]) == n)
    except (KeyError, TypeError, AttributeError, IndexError):
        ok = False
    return cache if ok else None


def load_or_build(files: list[FaceFile], size: int, cache_dir: str | os.PathLike | None = None) -> tuple[dict, Path, bool]:
    """Return (cache dict, cache path, built_now). Builds under a file lock when no valid cache exists; a
    truncated or corrupt cache file is replaced."""
    check_image_size(size)
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"faces-{cache_key(files, size)}-s{size}.pt"
    if path.exists() and (cache := read_cache(path)) is not None:
        return cache, path, False
    with FileLock(str(path) + ".lock"):
        if path.exists():  # another process built it while this one waited for the lock, or it is damaged
            cache = read_cache(path)
            if cache is not None:
                return cache, path, False
            print(f"note: the tensor cache {path} is truncated or corrupt; rebuilding it", file=sys.stderr)
        cache = build_cache(files, size)
        write_atomic(cache, path)
    return cache, path, True


def write_atomic(payload: dict, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename it there: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
