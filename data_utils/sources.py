"""Labelled faces from any source: a UTKFace-named folder, or a labels CSV, and the de-duplicated union of several.

A labels CSV has a header with ``file`` (a path, relative to the CSV's folder or absolute), ``age`` and ``gender``,
and may have ``race`` or ``group``. ``age`` is a whole number of years or a range: ``25-32``, ``(25, 32)``,
``[25, 32]`` or ``70+``; ``gender`` is 0/1 (UTKFace's coding: 0 = male) or ``male``/``female`` (also ``m``/``f``).
Ranges are for scoring (range hit rate, distance to the range): training needs an exact age per face, so
``load_faces`` refuses them (``AgeRangeError``).

Several sources are written as one string joined by ``os.pathsep``, like ``PATH`` (``join_sources``), so a config
field keeps one value; each source is scanned and its defects counted on its own, then the union is de-duplicated
by content (sha256) across sources.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from data_utils.scan import AGE_MAX, AGE_MIN, RACES, FaceFile, LabelError, ScanReport, _sha256, dedupe, scan_folder

CSV_SUFFIXES = (".csv",)
GENDER_WORDS = {"0": 0, "1": 1, "male": 0, "m": 0, "man": 0, "female": 1, "f": 1, "woman": 1}
_RANGE_RE = re.compile(r"^[\(\[]?\s*(\d+)\s*(?:-|,|–|to)\s*(\d+)\s*[\)\]]?$")
_OPEN_RE = re.compile(r"^(\d+)\s*\+$")
OPEN_RANGE_SPAN = 10  # "70+" stratifies and histograms as 70-80; its range for scoring is 70-AGE_MAX


class AgeRangeError(ValueError):
    """Training data whose ages are ranges; the message says why they are refused and where they are accepted."""


def split_sources(value: str | os.PathLike | list | tuple | None) -> list[str]:
    """The sources a data value names: a list as given, or a string split on ``os.pathsep``."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v)]
    return [part for part in str(value).split(os.pathsep) if part]


def join_sources(sources: list[str | os.PathLike]) -> str:
    """Several sources as one value (``os.pathsep``-joined, each absolute)."""
    return os.pathsep.join(str(Path(s).expanduser().resolve()) for s in sources)


def is_labels_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in CSV_SUFFIXES


def parse_age(text: str) -> tuple[int, tuple[int, int] | None]:
    """(age used for strata and histograms, the range or None for an exact age); ``LabelError`` when unusable."""
    text = str(text).strip()
    if text.isdigit():
        age, span = int(text), None
    elif m := _RANGE_RE.match(text):
        lo, hi = int(m[1]), int(m[2])
        if lo > hi:
            raise LabelError("age_unparsable", f"age range {text!r} runs backwards")
        age, span = (lo + hi) // 2, (lo, hi)
    elif m := _OPEN_RE.match(text):
        lo = int(m[1])
        age, span = min(lo + OPEN_RANGE_SPAN // 2, AGE_MAX), (lo, AGE_MAX)
    else:
        raise LabelError("age_unparsable", f"age {text!r} is neither a whole number nor a range like 25-32 or 70+")
    if not AGE_MIN <= (span or (age, age))[0] <= (span or (age, age))[1] <= AGE_MAX:
        raise LabelError("age_out_of_range", f"age {text!r} outside {AGE_MIN}-{AGE_MAX}")
    return age, span


def parse_gender(text: str) -> int:
    gender = GENDER_WORDS.get(str(text).strip().lower())
    if gender is None:
        raise LabelError("gender_unparsable", f"gender {text!r} is not 0/1 or male/female")
    return gender


def parse_group(row: dict) -> str | None:
    """The row's group: ``race`` (a UTKFace code 0-4 is named as ``RACES`` names it) or ``group``; None if absent."""
    value = (row.get("race") or row.get("group") or "").strip()
    if not value:
        return None
    return RACES.get(int(value), value) if value.isdigit() else value


def read_labels_csv(path: str | os.PathLike) -> tuple[list[FaceFile], ScanReport]:
    """Read a labels CSV: its de-duplicated usable files and a report counting every row that is not usable."""
    csv_path = Path(path).expanduser().resolve()
    report = ScanReport(folder=str(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"labels file {csv_path} cannot be read ({err}); pass --data with a readable CSV") from None
    rows = [{(k or "").strip().lower(): (v or "") for k, v in r.items()} for r in rows]
    missing = [c for c in ("file", "age", "gender") if rows and c not in header]
    if missing:
        raise ValueError(f"labels file {csv_path} has no {', '.join(missing)} column (it has {', '.join(header)}); "
                         "a labels CSV needs file, age and gender")
    candidates = []
    for row in rows:
        report.files_seen += 1
        name = row["file"].strip()
        try:
            age, span = parse_age(row["age"])
            gender = parse_gender(row["gender"])
        except LabelError as err:
            report.skip(err.reason, name or "(empty file column)")
            continue
        file = Path(name).expanduser()
        file = file if file.is_absolute() else csv_path.parent / file
        try:
            if not name or not file.is_file():
                report.skip("missing_file", name or "(empty file column)")
                continue
            if file.stat().st_size == 0:
                report.skip("empty_file", name)
                continue
            digest = _sha256(file)
        except OSError:
            report.skip("unreadable_file", name)
            continue
        candidates.append(FaceFile(str(file), name, age, gender, digest, span, parse_group(row)))
    kept = dedupe(candidates, report)
    report.age_ranges = sum(f.age_range is not None for f in kept)
    return kept, report


def scan_source(source: str | os.PathLike) -> tuple[list[FaceFile], ScanReport]:
    """One source: a labels CSV, or a folder of UTKFace-named files (``data_utils.scan.scan_folder``)."""
    path = Path(source).expanduser()
    if is_labels_file(path):
        if not path.is_file():
            raise FileNotFoundError(f"labels file {str(path)!r} does not exist; pass --data with a folder or a CSV")
        return read_labels_csv(path)
    return scan_folder(path)


def scan_sources(sources: str | os.PathLike | list) -> tuple[list[FaceFile], ScanReport]:
    """Every source scanned on its own (its report in ``report.sources``), then the union de-duplicated by content:
    a face in two sources with the same label is kept once; one whose labels disagree is dropped from both."""
    paths = split_sources(sources)
    if len(paths) == 1:
        return scan_source(paths[0])
    scanned = [scan_source(p) for p in paths]
    for files, part in scanned:
        part.usable = len(files)  # before decoding, which is done once for the union
    report = ScanReport(folder=" + ".join(r.folder for _, r in scanned))
    report.sources = [r for _, r in scanned]
    for part in report.sources:
        report.files_seen += part.files_seen
        for reason, n in part.skipped.items():
            report.skipped[reason] += n
            examples = report.skipped_examples.setdefault(reason, [])
            examples += part.skipped_examples.get(reason, [])[:max(0, 5 - len(examples))]
        for key in ("duplicate_groups", "duplicate_copies_dropped", "conflicting_groups", "conflicting_files_dropped"):
            setattr(report, key, getattr(report, key) + getattr(part, key))
    union = [f for files, _ in scanned for f in files]
    before = report.duplicate_copies_dropped + report.conflicting_files_dropped
    kept = dedupe(union, report)
    report.age_ranges = sum(f.age_range is not None for f in kept)
    report.across_sources_dropped = report.duplicate_copies_dropped + report.conflicting_files_dropped - before
    return kept, report


def refuse_ranges(files: list[FaceFile], where: str) -> None:
    """Raise ``AgeRangeError`` when any face's age is a range: a loss needs one age per face."""
    ranged = [f for f in files if f.age_range is not None]
    if ranged:
        lo, hi = ranged[0].age_range
        raise AgeRangeError(
            f"{where} gives {len(ranged)} of {len(files)} ages as ranges (e.g. {ranged[0].name}: {lo}-{hi}); training "
            "needs one age per face, since the age loss and the calibration compare exact years. Ranges are "
            "accepted for scoring: pass the file to search/run.py --ood or search/serve/predict.py --evaluate")
