import pytest

from data_utils.scan import LabelError, age_band, parse_name, scan_folder

# The malformed names that the real subset holds, with the labels they must give.
REAL_DEFECTS = {
    "24_0_1_20170116220224657 .jpg.chip.jpg": (24, 0, 1),  # space before .jpg
    "55_0_0_20170116232725357jpg.chip.jpg": (55, 0, 0),  # missing dot before jpg
    "39_1_20170116174525125.jpg.chip.jpg": (39, 1, None),  # missing race field
    "61_1_20170109142408075.jpg.chip.jpg": (61, 1, None),
    "61_1_20170109150557335.jpg.chip.jpg": (61, 1, None),
    "14_0_0_2017011022340900.jpg.chip.jpg": (14, 0, 0),  # 16-digit timestamp
    "28_1_2_201701161846515488.jpg.chip.jpg": (28, 1, 2),  # 18-digit timestamp
    "38_0_1_201701162330572788.jpg.chip.jpg": (38, 0, 1),
}


@pytest.mark.parametrize("name, expected", REAL_DEFECTS.items())
def test_parses_every_real_defect(name, expected, data_dir):
    assert (data_dir / name).is_file(), "the defect must exist in the shared subset"
    label = parse_name(name)
    assert (label.age, label.gender, label.race) == expected


@pytest.mark.parametrize("name, reason", [
    ("notes.txt", "unparsable_name"),
    ("face.jpg", "unparsable_name"),
    ("25_x_0_20170116220224657.jpg.chip.jpg", "unparsable_name"),
    ("25.jpg.chip.jpg", "unparsable_name"),
    ("0_0_0_20170116220224657.jpg.chip.jpg", "age_out_of_range"),
    ("117_1_0_20170116220224657.jpg.chip.jpg", "age_out_of_range"),
    ("30_2_0_20170116220224657.jpg.chip.jpg", "gender_out_of_range"),
])
def test_rejects_bad_names_with_a_reason(name, reason):
    with pytest.raises(LabelError) as err:
        parse_name(name)
    assert err.value.reason == reason


def test_plain_jpg_names_and_bounds_parse():
    assert parse_name("1_0_0_20170116220224657.jpg").age == 1
    assert parse_name("116_1_3_20170116220224657.JPG.chip.jpg").age == 116


def test_age_bands_cover_every_age():
    assert age_band(1) == "1-2" and age_band(25) == "20-29" and age_band(116) == "70+"
    with pytest.raises(ValueError):
        age_band(0)


def test_real_subset_duplicates(data_dir):
    files, report = scan_folder(data_dir)
    assert report.files_seen == 5000
    assert report.duplicate_groups == 12 and report.duplicate_copies_dropped == 12
    assert report.conflicting_groups == 4 and report.conflicting_files_dropped == 8
    assert len(files) == 4980
    assert len({f.sha256 for f in files}) == len(files)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        scan_folder(tmp_path / "nope")
