"""The time budget: durations, shares between stages, the ledger a resumed run reads, the retraining plan."""

import pytest

from search.budget import (
    BUDGET_FILE,
    REPORT_RESERVE_S,
    SEARCH_SHARE,
    SETUP_STAGE,
    Ledger,
    format_duration,
    parse_duration,
    plan_retrain,
)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("45", 45),
                                           ("1.5m", 90), (" 10M ", 600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "m", "0s", "-5m"])
def test_bad_durations_name_the_forms(text):
    with pytest.raises(ValueError, match="90s, 10m, 2h or 1h30m|longer than zero"):
        parse_duration(text)


def test_format_duration():
    assert [format_duration(s) for s in (42, 90, 3700)] == ["42s", "1m30s", "1h01m"]


def test_shares_follow_what_earlier_stages_spent(tmp_path):
    ledger = Ledger(tmp_path, 630.0)
    archs = ("scratch", "pretrained")
    usable = 630.0 - REPORT_RESERVE_S
    assert ledger.arch_share(archs, "scratch") == pytest.approx(usable / 2)
    assert ledger.search_limit(archs, "scratch") == pytest.approx(SEARCH_SHARE * usable / 2)
    ledger.record("scratch/search", 100.0)
    ledger.record("scratch/retrain", 100.0)
    # scratch left 100 s of its share unused: the pretrained model gets it
    assert ledger.arch_share(archs, "pretrained") == pytest.approx(usable - 200.0)
    assert ledger.retrain_seconds(archs, "scratch") == pytest.approx(usable / 2 - 200.0)
    # the set-up (reading the faces, starting Ray) is taken from the budget before the architectures share it
    ledger.add(SETUP_STAGE, 40.0)
    ledger.add(SETUP_STAGE, 20.0)
    assert ledger.spent[SETUP_STAGE] == 60.0
    assert ledger.arch_share(archs, "pretrained") == pytest.approx(usable - 60.0 - 200.0)
    again = Ledger(tmp_path)  # a resumed run reads the budget and what was spent
    assert again.budget_s == 630.0
    assert again.spent == {"scratch/search": 100.0, "scratch/retrain": 100.0, SETUP_STAGE: 60.0}
    assert (tmp_path / BUDGET_FILE).is_file()


@pytest.mark.parametrize("left, run, conc, k, seeds, expect", [
    (1000, 100, 2, 2, 2, (2, 2, 2)),    # everything asked fits
    (250, 100, 2, 3, 3, (1, 3, 2)),     # 2 waves × 2 = 4 runs: 3 seeds of the best config first
    (150, 100, 2, 3, 3, (1, 2, 1)),     # one wave of 2 runs: two seeds, an ensemble
    (50, 100, 2, 3, 3, (1, 2, 1)),      # not even one wave fits: one wave runs anyway, and says so
])
def test_retrain_plan(left, run, conc, k, seeds, expect):
    plan = plan_retrain(left, run, conc, k, seeds)
    assert (plan.configs, plan.seeds, plan.waves) == expect
    assert bool(plan.note) == (left < run)


@pytest.mark.parametrize("left, epochs, expect", [
    (1600, 24, (4, 48)),  # 2 waves of runs twice as long fit exactly: 4 seeds, lengthened to 2×
    (1300, 24, (4, 39)),  # 2 waves of runs ≥ 1.5× fit: 4 seeds, lengthened as far as 2 waves allow
    (1100, 24, (2, 48)),  # 2 waves would need runs shorter than 1.5× (33 epochs): 2 seeds, lengthened to 2×
    (800, 24, (2, 48)),   # 2 waves of full runs would fit; one wave of runs twice as long is measured better
    (510, 24, (2, 30)),   # 1 wave, lengthened to fill it
    (400, 24, (2, 24)),   # 1 wave of full runs, exactly
    (300, 24, (2, 18)),   # not one wave of full runs fits: the longest runs that do (≥ 50%)
])
def test_retrain_plan_lengthens_runs_before_adding_seeds_and_shortens_them_only_to_fit(left, epochs, expect):
    plan = plan_retrain(left, 400, 2, 2, 4, epochs)  # a full run is 400 s
    assert (plan.seeds, plan.epochs) == expect
    assert plan.seconds <= left * (1 + 1e-9)
    assert plan.seconds == pytest.approx(plan.waves * 400 * plan.epochs / epochs)
    assert not plan.note
    assert plan.configs == 1
    # room for everything: 2 configurations × 4 seeds at 48 epochs; the best configuration's runs are lengthened
    # before a second configuration comes in
    both = plan_retrain(4000, 400, 2, 2, 4, 24)
    assert (both.configs, both.seeds, both.epochs, both.waves) == (2, 4, 48, 4)
    seeds_first = plan_retrain(2400, 400, 2, 2, 4, 24)  # 3 waves: 6 runs at 48 epochs would allow 2 configurations
    assert (seeds_first.configs, seeds_first.seeds, seeds_first.epochs) == (1, 4, 48)
    late = plan_retrain(150, 400, 2, 2, 4, 24)  # not even 12 epochs fit: the shortest runs, overrunning, and it says so
    assert (late.seeds, late.epochs) == (2, 12) and "runs anyway" in late.note


def test_a_retraining_run_is_projected_from_the_trials_training_and_scoring_times():
    from search.budget import RETRAIN_PROJECTION_FACTOR, project_run_seconds

    # a search epoch of 30 s: 24 s training, 5 s scoring the validation split, 1 s checkpoint; 1.2× the faces
    run = project_run_seconds(30.0, 10, 1.2, epoch_seconds=24.0, score_seconds=5.0)
    assert run == pytest.approx(((24 * 1.2 + 1) * 10 + 5) * RETRAIN_PROJECTION_FACTOR)
    assert run < project_run_seconds(30.0, 10, 1.2)  # the whole epoch scaled: what a search without the parts gets
    assert project_run_seconds(30.0, 10, 1.2) == pytest.approx(30 * 1.2 * 10 * RETRAIN_PROJECTION_FACTOR)
    assert project_run_seconds(30.0, 10, 1.2, float("nan"), float("nan")) == project_run_seconds(30.0, 10, 1.2)


@pytest.mark.slow
def test_a_budgeted_search_stops_plans_its_retraining_and_resumes(data_dir, tmp_path):
    import json

    from conftest import TINY, run_cli

    args = ["--arch", "scratch", "--data", data_dir, "--storage-path", tmp_path, "--name", "b", *TINY,
            "--num-samples", "500", "--max-epochs", "2", "--grace-period", "2"]
    budgeted = [a if a != "none" else "70s" for a in args]  # TINY says --budget none
    result = run_cli(*budgeted)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ledger = json.loads((tmp_path / "b" / BUDGET_FILE).read_text())
    limit = ledger["limits"]["scratch/search"]
    setup = ledger["spent"][SETUP_STAGE]  # reading the faces and starting Ray come out of the budget first
    assert 0 < setup < 70 - REPORT_RESERVE_S
    assert limit == pytest.approx(SEARCH_SHARE * (70 - REPORT_RESERVE_S - setup))
    # the search must leave its whole share room for one retraining run of half its 2 epochs
    reserve = ledger["reserves"]["scratch/search"]
    assert reserve["share_s"] == pytest.approx(70 - REPORT_RESERVE_S - setup) and reserve["epochs"] == 1
    assert reserve["scale"] > 1  # a retraining run trains on train + validation
    # the search stopped on its share (or earlier, for that room or giving way to the retraining), or when no whole
    # trial fitted what was left of it; not on its 500 trials
    spent = ledger["spent"]["scratch/search"]
    assert spent < limit + 30
    assert spent >= limit or any(why in result.stdout for why in ("no further trials start", "(the shortest allowed)",
                                                               "goes to the retraining"))
    trials = json.loads((tmp_path / "b" / "manifest.json").read_text())["archs"]["scratch"]["search"]["trials"]
    assert len(trials) < 500
    assert "of the budget left for retraining" in result.stdout
    assert "time budget" in (tmp_path / "b" / "report" / "report.md").read_text()
    # a resume may change the budget (recorded); a search that ended on its budget stays ended
    more = [a if a != "70s" else "90s" for a in budgeted] + ["--resume"]
    result = run_cli(*more)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    again = json.loads((tmp_path / "b" / BUDGET_FILE).read_text())
    assert again["spent"][SETUP_STAGE] > setup  # the resumed run's own set-up is added
    setup = again["spent"][SETUP_STAGE]
    assert again["limits"]["scratch/search"] == pytest.approx(SEARCH_SHARE * (90 - REPORT_RESERVE_S - setup))
    assert again["spent"]["scratch/search"] == pytest.approx(ledger["spent"]["scratch/search"], abs=5)
    resumes = json.loads((tmp_path / "b" / "search_settings.json").read_text())["resumes"]
    assert resumes[-1]["changed"] == {"budget_s": 90.0}


@pytest.mark.parametrize("budget, extra", [("0.0001s", []), ("40s", ["--num-samples", "20"]),
                                           ("90s", ["--arch", "both"])])
def test_a_budget_too_short_for_one_trial_and_the_report_is_refused_with_the_minimum(data_dir, tmp_path, budget,
                                                                                      extra):
    from search.budget import format_duration, min_budget_s
    from search.run import get_args_parser
    from search.stages.settings import UsageError, resolve

    args = get_args_parser().parse_args(["--arch", "scratch", "--preset", "smoke", "--data", str(data_dir),
                                         "--storage-path", str(tmp_path), "--budget", budget, *extra])
    with pytest.raises(UsageError) as err:
        resolve(args)
    least = min_budget_s(2 if "both" in extra else 1)
    assert f"give --budget {format_duration(least)} or more" in str(err.value)


def test_the_command_line_refuses_a_budget_too_short_in_one_line(data_dir, tmp_path, capsys):
    from conftest import run_main

    code, err = run_main(capsys, "--arch", "scratch", "--preset", "smoke", "--data", data_dir, "--storage-path",
                         tmp_path, "--name", "short", "--budget", "1s")
    assert code == 2, err[-2000:]
    assert "give --budget 1m10s or more" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "short").exists()
