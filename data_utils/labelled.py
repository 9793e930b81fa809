"""Labelled sets as models see them: each labelled file's face, decoded (crops) or detected and aligned (photos).

A set is a folder or a labels CSV (``data_utils.sources``). It is read the way ``search/serve/predict.py`` reads images:
as crops when most files have UTKFace names, else each photo's face found and aligned (``data_utils.photos``),
keeping the most confident face, the one a label is about. Detection is the slow part, so the prepared faces are
kept in the tensor cache, keyed by the set's contents, the size and the detector.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from data_utils.cache import DecodeError, decode_file, decode_workers, default_cache_dir, write_atomic
from data_utils.photos import DEFAULT_DETECTOR, are_crops, check_detector, photo_faces, subject_face
from data_utils.scan import FaceFile
from data_utils.sources import scan_sources


@dataclass
class LabelledSet:
    """A set's faces as the models see them: uint8 N×3×S×S, one labelled file per row."""

    name: str
    source: str
    images: torch.Tensor
    files: list[FaceFile]
    skipped: Counter
    detected: bool
    listed: int  # usable labelled files before decoding or detection


def set_names(sources: list[str]) -> list[str]:
    """A short name per set: a CSV's folder, else the folder's name; a repeated name gets -2, -3, ..."""
    names, taken = [], Counter()
    for source in sources:
        path = Path(source)
        base = path.parent.name if path.suffix.lower() == ".csv" else path.name
        taken[base] += 1
        names.append(base if taken[base] == 1 else f"{base}-{taken[base]}")
    return names


def _subject(path: str, size: int, detector: str) -> tuple[torch.Tensor | None, str | None]:
    try:
        faces, tensors = photo_faces(path, size, detector)
    except DecodeError as err:
        return None, err.reason
    return (tensors[subject_face(faces)], None) if faces else (None, "no_face_found")


def read_set(name: str, source: str, size: int, detector: str = DEFAULT_DETECTOR,
             cache_dir: str | os.PathLike | None = None) -> LabelledSet:
    """Scan ``source`` and prepare each labelled file's face at ``size`` px (crops decoded, photos detected), or
    reuse the prepared faces the tensor cache holds for the same contents."""
    files, report = scan_sources(source)
    detected = not are_crops([f.path for f in files])
    skipped = Counter(report.skipped)
    skipped["duplicate_or_conflicting"] += report.duplicate_copies_dropped + report.conflicting_files_dropped
    key = json.dumps({"files": sorted(f.sha256 for f in files), "size": size,
                      "detector": detector if detected else None}).encode()
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = directory / f"labelled-{hashlib.sha256(key).hexdigest()[:20]}-s{size}.pt"
    cached = _read(path)
    if cached is None:
        if detected:
            check_detector(detector)
            prepared = [_subject(f.path, size, detector) for f in files]
        else:
            with ThreadPoolExecutor(decode_workers()) as pool:
                prepared = [(t, reason) for t, _, reason in pool.map(lambda f: decode_file(f.path, size), files)]
        kept = [(f.sha256, t) for f, (t, _) in zip(files, prepared) if t is not None]
        cached = {"sha256": [h for h, _ in kept],
                  "images": torch.stack([t for _, t in kept]) if kept else torch.empty(0, 3, size, size,
                                                                                       dtype=torch.uint8),
                  "failed": dict(Counter(reason for t, reason in prepared if t is None))}
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, path)
    by_sha = {f.sha256: f for f in files}
    skipped.update(cached["failed"])
    return LabelledSet(name, str(source), cached["images"], [by_sha[h] for h in cached["sha256"]], +skipped,
                       detected, len(files))


def _read(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # missing, truncated or corrupt: prepared again
        return None
