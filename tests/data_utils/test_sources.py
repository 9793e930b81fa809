"""Labels CSVs, age ranges, and the de-duplicated union of several sources."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import AAF, copy_real, run_cli

from data_utils.dataset import load_faces
from data_utils.sources import AgeRangeError, join_sources, parse_age, read_labels_csv, scan_sources, split_sources


def real_names(data_dir: Path, n: int) -> list[str]:
    """``n`` well-named crops of the real subset with distinct contents (it holds byte-identical copies)."""
    seen, names = set(), []
    for name in sorted(p.name for p in data_dir.iterdir() if name_ok(p.name)):
        digest = hashlib.sha256((data_dir / name).read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            names.append(name)
        if len(names) == n:
            return names
    raise AssertionError("too few distinct crops")


def name_ok(name: str) -> bool:
    parts = name.split("_")
    return len(parts) == 4 and all(p.isdigit() for p in parts[:3]) and parts[3].endswith(".jpg.chip.jpg")


def write_csv(path: Path, rows: list[tuple], header: str = "file,age,gender,race") -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(f'"{v}"' if "," in str(v) else str(v) for v in r)
                                            for r in rows) + "\n")
    return path


@pytest.fixture
def faces_folder(tmp_path, data_dir) -> Path:
    """60 real crops renamed as a non-UTKFace dataset would name them, with their true labels kept aside."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(real_names(data_dir, 60)):
        shutil.copy(data_dir / name, folder / f"img{i:03d}.jpg")
    return folder


def labels_of(data_dir: Path, n: int) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in name.split("_")[:3]) for name in real_names(data_dir, n)]


def test_a_csv_with_exact_ages_is_read_and_trained_on(faces_folder, data_dir, tmp_path):
    truth = labels_of(data_dir, 60)
    words = {0: "male", 1: "Female"}
    rows = [(f"img{i:03d}.jpg", age, words[g] if i % 2 else g, race) for i, (age, g, race) in enumerate(truth)]
    rows += [("missing.jpg", 30, "male", 0), ("img000.jpg", "old", "male", 0), ("img001.jpg", 30, "x", 0)]
    csv_path = write_csv(faces_folder / "labels.csv", rows)
    files, report = read_labels_csv(csv_path)
    assert [(f.age, f.gender) for f in files] == [(a, g) for a, g, _ in truth]
    assert {f.group for f in files} <= {"White", "Black", "Asian", "Indian", "Others"}
    assert report.files_seen == 63 and dict(report.skipped) == {"missing_file": 1, "age_unparsable": 1,
                                                                "gender_unparsable": 1}
    faces = load_faces(csv_path, 32, tmp_path / "cache")
    assert len(faces) == 60 and faces.ages.tolist() == [a for a, _, _ in truth]
    assert sorted(faces.genders.tolist()) == sorted(g for _, g, _ in truth)


def test_age_ranges_are_read_for_scoring_and_refused_for_training(faces_folder, tmp_path):
    rows = [(f"img{i:03d}.jpg", ["25-32", "(25, 32)", "70+", "[4, 6]", "41"][i % 5], i % 2, "") for i in range(60)]
    csv_path = write_csv(faces_folder / "ranges.csv", rows)
    files, report = scan_sources(csv_path)
    spans = [f.age_range for f in files[:5]]
    assert spans == [(25, 32), (25, 32), (70, 116), (4, 6), None]
    assert report.age_ranges == 48
    with pytest.raises(AgeRangeError, match="48 of 60 ages as ranges.*--ood"):
        load_faces(csv_path, 32, tmp_path / "cache")
    assert len(load_faces(csv_path, 32, tmp_path / "cache", allow_ranges=True)) == 60  # inspection reads them
    result = run_cli("--data", csv_path, "--epochs", "1", "--image-size", "32", "--out", tmp_path / "run",
                     script="experiments/train.py")
    assert result.returncode == 2 and "error:" in result.stderr and "ranges" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, expected", [("25-32", (28, (25, 32))), ("(25, 32)", (28, (25, 32))),
                                            ("70+", (75, (70, 116))), ("7", (7, None)), (" 60 ", (60, None))])
def test_parse_age(text, expected):
    assert parse_age(text) == expected


def test_a_csv_without_a_label_column_fails_in_one_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("file,years\na.jpg,3\n")
    with pytest.raises(ValueError, match="no age, gender column"):
        read_labels_csv(path)


def test_two_sources_with_a_shared_face_keep_it_once(data_dir, tmp_path):
    names = real_names(data_dir, 60)
    crops = tmp_path / "crops"
    copy_real(data_dir, crops, names[:40])
    other = tmp_path / "other"
    other.mkdir()
    for name in names[30:60]:  # ten faces in both sources, under other names
        shutil.copy(data_dir / name, other / ("x" + name.split("_")[-1]))
    rows = [("x" + n.split("_")[-1], n.split("_")[0], n.split("_")[1]) for n in names[30:60]]
    rows[0] = (rows[0][0], int(rows[0][1]) + 20, rows[0][2])  # one shared face whose labels disagree
    csv_path = write_csv(other / "labels.csv", rows, header="file,age,gender")
    files, report = scan_sources([str(crops), str(csv_path)])
    assert len(files) == 60 - 1 and len({f.sha256 for f in files}) == len(files)
    assert report.across_sources_dropped == 9 + 2 and report.conflicting_groups == 1
    assert [r.files_seen for r in report.sources] == [40, 30]
    joined = join_sources([crops, csv_path])
    assert split_sources(joined) == [str(crops.resolve()), str(csv_path.resolve())]
    result = run_cli("--data", crops, "--data", csv_path, "--json", "--image-size", "32", "--cache-dir",
                     tmp_path / "cache", script="data_utils/inspect_data.py")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["usable"] == 59 and len(shown["sources"]) == 2 and shown["across_sources_dropped"] == 11


@pytest.mark.skipif(not (AAF / "labels.csv").is_file(), reason="aaf-2k is not beside the project")
def test_the_shared_aaf_labels_read():
    files, report = scan_sources(AAF / "labels.csv")
    assert report.files_seen == 2000 and len(files) > 1950
    assert {f.gender for f in files} == {0, 1} and all(f.age_range is None for f in files)
