"""Per-group figures equal a hand computation; the largest gaps are named."""
import pandas as pd
import pytest

from experiments.evaluation.groups import fairness, group_table, largest_gaps, with_groups


def small_folder():
    # name, true age, true gender, predicted age, P(female)
    rows = [("30_0_0_20170101000000001.jpg.chip.jpg", 30, 0, 34.0, 0.1),  # White man: right, 4 off
            ("40_0_0_20170101000000002.jpg.chip.jpg", 40, 0, 38.0, 0.7),  # White man: wrong, 2 off
            ("25_1_0_20170101000000003.jpg.chip.jpg", 25, 1, 25.0, 0.9),  # White woman: right, 0 off
            ("50_1_1_20170101000000004.jpg.chip.jpg", 50, 1, 60.0, 0.4),  # Black woman: wrong, 10 off
            ("20_0_1_20170101000000005.jpg.chip.jpg", 20, 0, 21.0, 0.2),  # Black man: right, 1 off
            ("60_1_20170101000000006.jpg.chip.jpg", 60, 1, 57.0, 0.8)]    # no race field: right, 3 off
    return pd.DataFrame(rows, columns=["name", "age", "gender", "pred_age", "p_female"])


def test_per_group_figures_by_hand():
    table = group_table(with_groups(small_folder()), ["race"], n_boot=200).set_index("race")
    assert table.loc["White", "faces"] == 3
    assert table.loc["White", "gender_acc"] == pytest.approx(2 / 3)
    assert table.loc["White", "age_mae"] == pytest.approx((4 + 2 + 0) / 3)
    assert table.loc["Black", "gender_acc"] == pytest.approx(1 / 2)
    assert table.loc["Black", "age_mae"] == pytest.approx((10 + 1) / 2)
    assert table.loc["unknown", "faces"] == 1 and table.loc["unknown", "age_mae"] == 3
    for _, row in table.iterrows():
        assert row["acc_low"] <= row["gender_acc"] <= row["acc_high"]
        assert row["mae_low"] <= row["age_mae"] <= row["mae_high"]
    crossed = group_table(with_groups(small_folder()), ["sex", "race"], n_boot=200).set_index(["sex", "race"])
    assert crossed.loc[("male", "White"), "gender_acc"] == pytest.approx(1 / 2)
    assert crossed.loc[("female", "Black"), "age_mae"] == 10


def test_largest_gaps_are_named():
    table = group_table(with_groups(small_folder()), ["race"], n_boot=50)
    gaps = largest_gaps(table, ["race"], min_faces=2)  # the single unknown face is left out
    assert gaps["gender_acc"] == {"best": "White", "worst": "Black", "gap_points": pytest.approx(100 * (2 / 3 - 1 / 2), abs=0.01)}
    assert gaps["age_mae"]["worst"] == "Black" and gaps["age_mae"]["gap_years"] == pytest.approx(5.5 - 2, abs=1e-3)
    assert set(fairness(small_folder(), n_boot=50, min_faces=2)) == {"race", "sex_race"}
