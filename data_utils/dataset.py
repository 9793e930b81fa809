"""From a folder to labelled uint8 tensors and a saved, leak-free train/validation/test split."""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_utils.cache import check_image_size, load_or_build
from data_utils.scan import ScanReport, age_band, race_group, summarize_labels
from data_utils.sources import refuse_ranges, scan_sources, split_sources


class NoUsableImagesError(RuntimeError):
    """Raised when a folder holds nothing that can be trained on."""


class TooFewImagesError(ValueError):
    """The usable images are too few, or of one gender only, for a train/validation/test split worth scoring."""


class SplitMismatchError(ValueError):
    """A saved split names images that the data folder no longer holds."""


# below this a test split holds a handful of faces, and its accuracy (0% or 100%) says nothing
MIN_SPLIT_IMAGES = 50
SPLIT_FILE = "split.json"  # a split saved beside what was trained on it (Split.save)


@dataclass
class Faces:
    """Decoded faces: ``images`` uint8 N×3×S×S, ``ages``/``genders`` int64 N, one name and sha256 per row.

    A view (``view``) shares ``images`` with the faces it came from and picks its rows through ``rows``, so the
    parts of a split cost no copy of the pixels. Pickled, the tensors travel as numpy arrays: Ray's object store
    hands those to every process of a node as one shared, read-only copy instead of a private one each.
    """

    images: torch.Tensor
    ages: torch.Tensor
    genders: torch.Tensor
    names: list[str]
    sha256: list[str]
    report: ScanReport
    cache_path: str = ""
    rows: torch.Tensor | None = None  # a view's rows of ``images``; None: every row, in order

    def __len__(self) -> int:
        return len(self.names)

    def pixels(self) -> torch.Tensor:
        """This part's images as one tensor (a copy for a view)."""
        return self.images if self.rows is None else self.images[self.rows]

    def _rows(self, index: np.ndarray | list[int]) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return idx if self.rows is None else self.rows[idx]

    def subset(self, index: np.ndarray | list[int]) -> "Faces":
        """A copy of the rows ``index``."""
        view = self.view(index)
        return dataclasses.replace(view, images=view.pixels(), rows=None)

    def view(self, index: np.ndarray | list[int]) -> "Faces":
        """The rows ``index`` without copying the images (labels, small, are copied)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return Faces(self.images, self.ages[idx], self.genders[idx], [self.names[i] for i in idx.tolist()],
                     [self.sha256[i] for i in idx.tolist()], self.report, self.cache_path, self._rows(idx))

    def __reduce__(self):
        arrays = [t.numpy() if t is not None else None for t in (self.images, self.ages, self.genders, self.rows)]
        return _faces_from_arrays, (*arrays, self.names, self.sha256, self.report, self.cache_path)


def group_draw_weights(names: list[str], power: float) -> torch.Tensor:
    """One sampling weight per face, (its race group's size)^-power, scaled to a mean of 1: 0 leaves every face
    equal, 1 draws every group (``race_group``; names without the field form one) equally often."""
    groups = [race_group(n) for n in names]
    sizes = collections.Counter(groups)
    weights = torch.tensor([sizes[g] ** -power for g in groups], dtype=torch.float64)
    return weights * (len(weights) / weights.sum())


def _faces_from_arrays(images, ages, genders, rows, names, sha256, report, cache_path) -> Faces:
    """Unpickle ``Faces``: wrap the arrays without copying (read-only when they live in Ray's object store)."""
    with warnings.catch_warnings():  # torch warns that a read-only array gives a tensor that must not be written
        warnings.simplefilter("ignore", UserWarning)
        wrap = lambda a: torch.from_numpy(a) if a is not None else None  # noqa: E731
        return Faces(wrap(images), wrap(ages), wrap(genders), names, sha256, report, cache_path, wrap(rows))


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data folder: the argument, else ``$UTKFACE_DIR``; absolute, since Ray Tune changes directories."""
    chosen = data_dir or os.environ.get("UTKFACE_DIR")
    if not chosen:
        raise ValueError("no data folder given: pass --data DIR or set UTKFACE_DIR to a folder of UTKFace crops")
    return Path(chosen).expanduser().resolve()


def resolve_sources(data: str | os.PathLike | list | None) -> list[Path]:
    """The data sources (folders or labels CSVs): the argument, else ``$UTKFACE_DIR``; each absolute."""
    return [resolve_data_dir(p) for p in split_sources(data)] or [resolve_data_dir(None)]


def load_faces(data_dir: str | os.PathLike | list | None, image_size: int = 128,
               cache_dir: str | os.PathLike | None = None, allow_ranges: bool = False) -> Faces:
    """Scan the sources (a folder, a labels CSV, or several: ``data_utils.sources``), decode them once into the
    tensor cache (or reuse it), and report what was skipped. Ages given as ranges raise ``AgeRangeError`` unless
    ``allow_ranges`` (inspection: the cache's ages are then the ranges' middles)."""
    check_image_size(image_size)
    files, report = scan_sources(resolve_sources(data_dir))
    if not allow_ranges:
        refuse_ranges(files, report.folder)
    cache, path, _ = load_or_build(files, image_size, cache_dir)
    for reason, names in cache["skipped"].items():
        for name in names:
            report.skip(reason, name)
    report.converted.update(cache["converted"])
    summarize_labels(report, cache["ages"].tolist(), cache["genders"].tolist())
    if report.usable == 0:
        found = ", ".join(f"{n} {r}" for r, n in sorted(report.skipped.items())) or "no files at all"
        raise NoUsableImagesError(
            f"no usable images in {report.folder}: {report.files_seen} entries seen ({found}). Expected JPEG face "
            "crops named age_gender_race_datetime.jpg.chip.jpg, or a labels CSV with file, age and gender columns")
    return Faces(cache["images"], cache["ages"], cache["genders"], cache["names"], cache["sha256"], report, str(path))


@dataclass
class Split:
    """Row indices into a ``Faces`` for each part, plus the sha256 of every member (so a split file is checkable)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    fractions: tuple[float, float, float]

    def to_json(self, faces: Faces) -> dict:
        return {
            "seed": self.seed,
            "fractions": {"train": self.fractions[0], "val": self.fractions[1], "test": self.fractions[2]},
            "counts": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            **{part: [faces.sha256[i] for i in getattr(self, part)] for part in ("train", "val", "test")},
        }

    def save(self, path: str | os.PathLike, faces: Faces) -> None:
        Path(path).write_text(json.dumps(self.to_json(faces)))

    @classmethod
    def load(cls, path: str | os.PathLike, faces: Faces) -> "Split":
        """Rebuild a saved split against ``faces``; every saved image must still be there."""
        saved = json.loads(Path(path).read_text())
        row = {h: i for i, h in enumerate(faces.sha256)}
        parts = {}
        for part in ("train", "val", "test"):
            missing = [h for h in saved[part] if h not in row]
            if missing:
                raise SplitMismatchError(
                    f"the data folder {faces.report.folder} no longer holds {len(missing)} of the {len(saved[part])} "
                    f"{part} images of the saved split {path}; pass --data with the folder the experiment was made from")
            parts[part] = np.array([row[h] for h in saved[part]], dtype=np.int64)
        fr = saved["fractions"]
        return cls(parts["train"], parts["val"], parts["test"], saved["seed"], (fr["train"], fr["val"], fr["test"]))


def check_enough(faces: Faces, rows: np.ndarray, max_images: int, fractions: tuple[float, float, float]) -> None:
    """Refuse (``TooFewImagesError``, saying what was found) data too small or too one-sided to split and score."""
    genders = faces.genders[torch.as_tensor(rows, dtype=torch.int64)]
    n, female = len(rows), int(genders.sum())
    if n >= MIN_SPLIT_IMAGES and 0 < female < n:
        return
    where = f"max_images {max_images} leaves" if 0 < max_images < len(faces) else f"{faces.report.folder or 'the data'} holds"
    parts = "/".join(f"{f:.0%}" for f in fractions)
    raise TooFewImagesError(
        f"{where} {n} usable image(s) ({n - female} male, {female} female): too few for a {parts} split; need at "
        f"least {MIN_SPLIT_IMAGES} with both genders (add images, or raise --max-images)")


def make_split(faces: Faces, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
               max_images: int = 0) -> Split:
    """Deterministic split stratified by gender × age band.

    Works on de-duplicated content (each sha256 appears once in ``faces``), so no image can sit in two
    parts. Members of a stratum are ordered by sha256 before the seeded shuffle, so the split depends
    on the images and the seed, not on file names or listing order. ``max_images`` > 0 first draws a
    seeded subset of that size (for quick runs), then splits it the same way.
    """
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, 0 < test_fraction and val+test < 1; got {val_fraction}, {test_fraction}")
    rng = np.random.default_rng(seed)
    order = np.argsort(np.array(faces.sha256))
    if 0 < max_images < len(faces):
        order = np.sort(rng.choice(order, size=max_images, replace=False))
        order = order[np.argsort(np.array(faces.sha256)[order])]
    check_enough(faces, order, max_images, (1 - val_fraction - test_fraction, val_fraction, test_fraction))
    strata: dict[tuple[int, str], list[int]] = {}
    ages, genders = faces.ages.tolist(), faces.genders.tolist()
    for i in order.tolist():
        strata.setdefault((genders[i], age_band(ages[i])), []).append(i)
    train, val, test = [], [], []
    # carrying the rounding remainder across strata keeps the totals at the requested fractions
    carry_val = carry_test = 0.0
    for key in sorted(strata):
        members = np.array(strata[key])[rng.permutation(len(strata[key]))]
        want_test, want_val = len(members) * test_fraction + carry_test, len(members) * val_fraction + carry_val
        n_test, n_val = int(round(want_test)), int(round(want_val))
        n_test = min(n_test, len(members))
        n_val = min(n_val, len(members) - n_test)
        carry_test, carry_val = want_test - n_test, want_val - n_val
        test += members[:n_test].tolist()
        val += members[n_test:n_test + n_val].tolist()
        train += members[n_test + n_val:].tolist()
    if not train or not test or (val_fraction > 0 and not val):
        raise ValueError(f"{len(order)} images are too few for a {1 - val_fraction - test_fraction:.0%}/"
                         f"{val_fraction:.0%}/{test_fraction:.0%} split")
    as_array = lambda xs: np.array(sorted(xs), dtype=np.int64)  # noqa: E731
    return Split(as_array(train), as_array(val), as_array(test), seed,
                 (1 - val_fraction - test_fraction, val_fraction, test_fraction))
