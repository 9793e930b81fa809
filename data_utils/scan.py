"""Scan a folder of UTKFace crops: parse labels from names, hash contents, resolve duplicates.

UTKFace names its files ``age_gender_race_datetime.jpg.chip.jpg``. The real dataset has defects that
this module tolerates (a space before ``.jpg``, a missing dot before ``jpg``, a missing race field,
timestamps of the wrong length) and defects it must skip and count (unparsable names, labels out of
range, empty files, sub-folders). Whether a file decodes is found out once, when the tensor cache is
built (``data_utils.cache``), not here: scanning only reads bytes, so it stays fast.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

AGE_MIN, AGE_MAX = 1, 116
GENDERS = (0, 1)  # UTKFace: 0 = male, 1 = female

# age _ gender [_ race] _ timestamp, then optional spaces, an optional dot, "jpg", and optionally
# ".chip.jpg" (the aligned-and-cropped release). Timestamp length is not checked: real files have 16-18 digits.
_NAME_RE = re.compile(
    r"^(?P<age>\d+)_(?P<gender>\d+)(?:_(?P<race>\d+))?_(?P<stamp>\d+)\s*\.?jpe?g(?:\.chip\.jpe?g)?$",
    re.IGNORECASE,
)


class LabelError(ValueError):
    """A file name that cannot give a usable (age, gender) label; ``reason`` is the skip counter's key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FaceLabel:
    age: int
    gender: int
    race: int | None


@dataclass(frozen=True)
class FaceFile:
    path: str  # absolute
    name: str
    age: int
    gender: int
    sha256: str
    age_range: tuple[int, int] | None = None  # a labels file's age given as a range (data_utils.sources)
    group: str | None = None  # a labels file's race or group column


@dataclass
class ScanReport:
    """What a folder scan found. ``skipped`` and ``converted`` count files by reason; no file goes uncounted."""

    folder: str
    files_seen: int = 0
    skipped: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    duplicate_groups: int = 0  # groups of byte-identical files whose labels agree: one copy kept
    duplicate_copies_dropped: int = 0
    conflicting_groups: int = 0  # groups whose copies disagree on age or gender: all dropped
    conflicting_files_dropped: int = 0
    usable: int = 0
    gender_counts: dict[int, int] = field(default_factory=dict)
    age_histogram: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    sources: list["ScanReport"] = field(default_factory=list)  # a union's per-source reports (data_utils.sources)
    across_sources_dropped: int = 0  # of a union: copies of a face that another source also holds
    age_ranges: int = 0  # usable faces whose age a labels file gives as a range

    def skip(self, reason: str, name: str) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(name)

    def to_dict(self) -> dict:
        return {
            "folder": self.folder,
            "files_seen": self.files_seen,
            "usable": self.usable,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": sum(self.skipped.values()),
            "skipped_examples": self.skipped_examples,
            "converted": dict(sorted(self.converted.items())),
            "duplicates": {
                "groups_kept_one": self.duplicate_groups,
                "copies_dropped": self.duplicate_copies_dropped,
                "conflicting_groups_dropped": self.conflicting_groups,
                "conflicting_files_dropped": self.conflicting_files_dropped,
            },
            "gender_counts": {"male(0)": self.gender_counts.get(0, 0), "female(1)": self.gender_counts.get(1, 0)},
            "age_histogram": self.age_histogram,
            **({"age_ranges": self.age_ranges} if self.age_ranges else {}),
            **({"sources": [r.to_dict() for r in self.sources], "across_sources_dropped": self.across_sources_dropped}
               if self.sources else {}),
        }


def parse_name(name: str) -> FaceLabel:
    """Parse a UTKFace file name into its label, or raise ``LabelError`` saying why it is unusable."""
    m = _NAME_RE.match(name.strip())
    if m is None:
        raise LabelError("unparsable_name", f"{name!r} does not look like age_gender[_race]_datetime.jpg.chip.jpg")
    age, gender = int(m["age"]), int(m["gender"])
    if not AGE_MIN <= age <= AGE_MAX:
        raise LabelError("age_out_of_range", f"{name!r}: age {age} outside {AGE_MIN}-{AGE_MAX}")
    if gender not in GENDERS:
        raise LabelError("gender_out_of_range", f"{name!r}: gender {gender} is neither 0 nor 1")
    return FaceLabel(age=age, gender=gender, race=int(m["race"]) if m["race"] is not None else None)


# UTKFace's race field, named as the dataset's authors name the groups; a name without one (or with another
# value) is in RACE_UNKNOWN
RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
RACE_UNKNOWN = "unknown"


def race_group(name: str) -> str:
    """The race group a UTKFace file name gives (``RACES``), or ``RACE_UNKNOWN``."""
    try:
        race = parse_name(name).race
    except LabelError:
        return RACE_UNKNOWN
    return RACES.get(race, RACE_UNKNOWN)


AGE_BANDS = ((1, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 116))


def age_band(age: int) -> str:
    """The age band ('20-29', ...) used for stratified splits, histograms and error analysis."""
    for lo, hi in AGE_BANDS:
        if lo <= age <= hi:
            return f"{lo}-{hi}" if hi < AGE_MAX else f"{lo}+"
    raise ValueError(f"age {age} outside {AGE_MIN}-{AGE_MAX}")


def _sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def list_files(folder: str | os.PathLike, report: ScanReport) -> list[Path]:
    """The regular files directly in ``folder``, sorted by name. Every other entry is counted in ``report``:
    sub-folders, links that lead nowhere or loop, and entries that cannot be examined.

    Raises ``FileNotFoundError``/``NotADirectoryError``/``PermissionError`` with a message naming the fix.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist; pass --data DIR or set UTKFACE_DIR")
    if not root.is_dir():
        raise NotADirectoryError(f"data path {str(root)!r} is not a folder of UTKFace images")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except PermissionError:
        raise PermissionError(f"data folder {str(root)!r} cannot be listed (permission denied); "
                              "make it readable or pass another --data DIR") from None
    files = []
    for entry in entries:
        report.files_seen += 1
        try:
            if entry.is_dir(follow_symlinks=True):
                report.skip("subfolder", entry.name)
                continue
            if not entry.is_file(follow_symlinks=True):
                report.skip("broken_link" if entry.is_symlink() else "not_a_regular_file", entry.name)
                continue
        except OSError:  # a link loop (ELOOP) or an entry this user may not examine
            report.skip("broken_link" if entry.is_symlink() else "unreadable_file", entry.name)
            continue
        files.append(Path(entry.path))
    return files


def scan_folder(folder: str | os.PathLike) -> tuple[list[FaceFile], ScanReport]:
    """Scan ``folder`` (not recursively) and return its de-duplicated usable files, sorted by name, and a report.

    Raises ``FileNotFoundError``/``NotADirectoryError``/``PermissionError`` for a bad path. An empty result is not
    an error here: ``data_utils.dataset.load_faces`` decides that after decoding.
    """
    root = Path(folder).expanduser().resolve()
    report = ScanReport(folder=str(root))
    candidates: list[FaceFile] = []
    for path in list_files(root, report):
        try:
            label = parse_name(path.name)
        except LabelError as err:
            report.skip(err.reason, path.name)
            continue
        try:
            if path.stat().st_size == 0:
                report.skip("empty_file", path.name)
                continue
            digest = _sha256(path)
        except OSError:  # unreadable for this user, or gone since it was listed
            report.skip("unreadable_file", path.name)
            continue
        candidates.append(FaceFile(str(path), path.name, label.age, label.gender, digest))
    return dedupe(candidates, report), report


def dedupe(files: list[FaceFile], report: ScanReport) -> list[FaceFile]:
    """Keep one file per group of byte-identical files; drop whole groups whose labels disagree."""
    groups: dict[str, list[FaceFile]] = defaultdict(list)
    for f in files:
        groups[f.sha256].append(f)
    kept = []
    for copies in groups.values():
        if len(copies) == 1:
            kept.append(copies[0])
            continue
        if len({(c.age, c.gender, c.age_range) for c in copies}) > 1:
            report.conflicting_groups += 1
            report.conflicting_files_dropped += len(copies)
            continue
        report.duplicate_groups += 1
        report.duplicate_copies_dropped += len(copies) - 1
        kept.append(min(copies, key=lambda c: c.name))
    return sorted(kept, key=lambda f: f.name)


def summarize_labels(report: ScanReport, ages: list[int], genders: list[int]) -> None:
    """Fill the report's usable count, gender counts and age histogram from the final label lists."""
    report.usable = len(ages)
    report.gender_counts = dict(Counter(genders))
    hist = Counter(age_band(a) for a in ages)
    report.age_histogram = {age_band(lo): hist.get(age_band(lo), 0) for lo, _ in AGE_BANDS}
