"""Edges of a finished experiment: a changed data folder, trial folders that moved, searches where every trial
failed, data too small to split, trial ids that look like numbers, crowded log axes."""
import re
import shutil

import matplotlib
import pandas as pd
import pytest
from conftest import TINY, copy_real, run_cli
from matplotlib.backends.backend_agg import FigureCanvasAgg

from search.report.sections import log_ticks, objective_vs_params
from search.stages.results import read_trials

matplotlib.use("Agg")


def test_report_after_the_data_folder_changed_names_the_fix(tiny_search, data_dir, tmp_path):
    folder, _ = tiny_search
    copy = tmp_path / "tiny"
    shutil.copytree(folder, copy)
    other = tmp_path / "other"
    copy_real(data_dir, other, sorted(p.name for p in data_dir.iterdir())[:80])
    result = run_cli("--name", "tiny", "--storage-path", tmp_path, "--stage", "report", "--data", other)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no longer holds" in result.stderr and "pass --data with the folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_report_says_which_trial_folder_is_missing(tiny_search, tmp_path):
    folder, _ = tiny_search
    copy = tmp_path / "tiny"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "report")
    trial = next(p for p in (copy / "scratch").iterdir() if p.is_dir() and (p / "progress.csv").is_file())
    trial.rename(copy / "scratch" / "renamed-by-hand")
    result = run_cli("--name", "tiny", "--storage-path", tmp_path, "--stage", "report")
    assert result.returncode == 0, result.stderr[-2000:]
    md = (copy / "report" / "report.md").read_text()
    assert f"its folder {trial} is missing" in md


@pytest.mark.slow
def test_a_search_whose_every_trial_failed_still_reports(data_dir, tmp_path):
    # a learning rate this large makes every trial's loss non-finite in its first epoch (a --set field is fixed
    # for every trial, not searched): failed, not retried
    result = run_cli("--arch", "scratch", "--data", data_dir, "--storage-path", tmp_path, "--name", "doomed",
                     "--num-samples", "2", "--top-k", "1", "--seeds", "1", "--preset", "smoke", "--max-epochs", "1",
                     "--grace-period", "1", "--max-failures", "0", "--set", "image_size=32", "max_images=200", "lr=1e30",
                     "grad_clip=0", "schedule=none")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = read_trials(tmp_path / "doomed" / "scratch" / "trials.csv")
    assert (trials["status"] == "failed").all() and trials["reason"].str.contains("non-finite|became").all()
    assert "every search trial failed; nothing to retrain" in result.stdout
    md = (tmp_path / "doomed" / "report" / "report.md").read_text()
    assert "no trial reported a single epoch" in md


@pytest.mark.parametrize("case", ["ten_images", "one_gender"])
def test_data_too_small_to_split_is_refused(case, data_dir, tmp_path):
    names = sorted(p.name for p in data_dir.iterdir() if p.name.endswith(".jpg.chip.jpg"))
    if case == "ten_images":
        names = names[:10]
    else:
        names = [n for n in names if n.split("_")[1] == "0"][:80]
    copy_real(data_dir, tmp_path / "faces", names)
    result = run_cli("--data", tmp_path / "faces", "--storage-path", tmp_path / "runs", "--name", "small", *TINY)
    assert result.returncode == 2, result.stderr[-2000:]
    found = r"holds 10 usable image\(s\)" if case == "ten_images" else r"holds \d+ usable image\(s\) \(\d+ male, 0 female\)"
    assert re.search(found, result.stderr) and "need at least 50 with both genders" in result.stderr
    assert not (tmp_path / "runs" / "small").exists()


def test_trial_ids_that_look_like_numbers_stay_text(tmp_path):
    pd.DataFrame({"trial_id": ["906370e5", "00012"], "status": ["completed", "failed"]}).to_csv(tmp_path / "t.csv",
                                                                                                 index=False)
    assert read_trials(tmp_path / "t.csv")["trial_id"].tolist() == ["906370e5", "00012"]


def test_log_scaled_parameter_axes_do_not_crowd(tmp_path):
    assert 2 <= len(log_ticks(0.02, 0.5)) <= 4 and 2 <= len(log_ticks(0.03, 0.04)) <= 4
    import matplotlib.pyplot as plt

    trials = pd.DataFrame({
        "status": ["completed", "stopped_early"] * 4,
        "score_objective": [1.0, 1.2, 0.9, 1.5, 1.1, 1.3, 0.95, 1.4],
        "config/age_loss_weight": [0.021, 0.03, 0.05, 0.08, 0.12, 0.2, 0.33, 0.49],
        "config/backbone_lr_mult": [0.011, 0.02, 0.05, 0.09, 0.15, 0.3, 0.6, 0.98],
        "config/lr": [1.1e-4, 2e-4, 4e-4, 8e-4, 1e-3, 2e-3, 3e-3, 4.9e-3],
    })
    params = [c for c in trials.columns if c.startswith("config/")]
    captured = {}
    original = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        captured["fig"] = fig
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        objective_vs_params(trials, params, tmp_path / "p.png")
    finally:
        plt.Figure.savefig = original
    fig = captured["fig"]
    canvas = FigureCanvasAgg(fig)  # the report closed the figure; draw it again to measure its labels
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes[:len(params)]:
        labels = [t for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
        assert len(boxes) >= 2, ax.get_title()
        for left, right in zip(boxes, boxes[1:]):
            assert left.x1 < right.x0, f"{ax.get_title()}: tick labels overlap"
