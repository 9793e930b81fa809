"""--ood: labelled sets from outside the training data scored after the retraining, shown in the report, and used
for no choice."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
from conftest import AAF, copy_real, run_cli


@pytest.fixture(scope="module")
def ood_sets(tmp_path_factory, data_dir):
    """An All-Age-Faces sample (photos: detected and aligned) and UTKFace crops labelled with age ranges."""
    root = tmp_path_factory.mktemp("ood")
    with open(AAF / "labels.csv") as f:
        rows = list(csv.DictReader(f))[::80][:25]
    photos = root / "aaf-sample" / "labels.csv"
    photos.parent.mkdir()
    photos.write_text("file,age,gender\n" + "".join(f"{AAF / r['file']},{r['age']},{r['gender']}\n" for r in rows))
    crops = root / "ranged"
    names = sorted(p.name for p in data_dir.glob("*_*_*_*.jpg.chip.jpg"))[-30:]
    copy_real(data_dir, crops, names)
    with open(crops / "labels.csv", "w") as f:
        f.write("file,age,gender,race\n")
        for n in names:
            age, gender, race = (int(x) for x in n.split("_")[:3])
            f.write(f"{n},\"({max(1, age - 3)}, {age + 3})\",{'female' if gender else 'male'},{race}\n")
    return photos, crops / "labels.csv"


@pytest.mark.skipif(not (AAF / "labels.csv").is_file(), reason="aaf-2k is not beside the project")
def test_ood_sets_are_scored_reported_and_choose_nothing(tiny_search, ood_sets, tmp_path):
    experiment, _ = tiny_search
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(experiment, copy)
    before = json.loads((copy / "manifest.json").read_text())
    photos, ranged = ood_sets
    result = run_cli("--name", "tiny", "--storage-path", copy.parent, "--stage", "report",
                     "--ood", photos, "--ood", ranged)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    after = json.loads((copy / "manifest.json").read_text())
    for arch, entry in before["archs"].items():  # the search's and the retraining's records are untouched
        assert after["archs"][arch]["search"] == entry["search"]
        assert after["archs"][arch]["retrain"] == entry["retrain"]
        assert after["archs"][arch]["ood"]["results"] == "ood/ood.json"
    scored = json.loads((copy / "ood" / "ood.json").read_text())
    assert [s["name"] for s in scored["sets"]] == ["aaf-sample", "ranged"]
    assert scored["sets"][0]["read_as"].startswith("photos") and scored["sets"][1]["read_as"] == "crops"
    assert scored["sets"][0]["scored"] + sum(scored["sets"][0]["skipped"].values()) == 25
    for arch in before["archs"]:
        runs = [r for r in before["archs"][arch]["retrain"]["runs"] if r["checkpoint"]]
        rows = [r for r in scored["rows"] if r["arch"] == arch]
        assert len(rows) == 2 * (len(runs) + 1) and sum(r["exported"] for r in rows) == 2
        photo_row, ranged_row = (next(r for r in rows if r["exported"] and r["set"] == s) for s in ("aaf-sample", "ranged"))
        assert photo_row["age_mae"] and "range_hit" not in photo_row
        assert ranged_row["age_mae"] is None and ranged_row["range_hit"] and ranged_row["n"] == 30
        assert 0 <= ranged_row["interval_coverage"]["value"] <= 1
        assert {g["race"] for g in ranged_row["groups"]["race"]["table"]} <= {"White", "Black", "Asian", "Indian",
                                                                              "Others"}
        assert (copy / "ood" / f"{arch}-ranged.csv").is_file()
    report = (copy / "report" / "report.md").read_text()
    section = report.split("## 8. Out of domain")[1].split("## 9.")[0]
    assert "test split (in domain)" in section and "ranged" in section and "no choice" in section
    assert "exported: ensemble" in section


def test_an_ood_set_that_does_not_exist_is_refused_before_any_work(tiny_search, tmp_path):
    experiment, _ = tiny_search
    result = run_cli("--name", "tiny", "--storage-path", experiment.parent, "--stage", "report",
                     "--ood", tmp_path / "nowhere")
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --ood")
    assert "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1
