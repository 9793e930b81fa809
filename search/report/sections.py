"""The report's sections, in order: each writes its headings, paragraphs, tables and figures into a ``Doc``."""
from __future__ import annotations

import math
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import torch
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

from data_utils.dataset import SPLIT_FILE, Faces, Split
from data_utils.scan import AGE_BANDS, age_band
from data_utils.sources import split_sources
from experiments.config import TrainConfig, load_config_file
from experiments.evaluation.calibration import CHECK_SPLITS, DEFAULT_COVERAGE, SPREAD, calibrate
from experiments.evaluation.groups import MIN_GROUP_FACES, fairness
from experiments.evaluation.metrics import per_face
from experiments.objective import METRIC, REFERENCE_AGE_MAE, REFERENCE_GENDER_ERROR, predicted_female
from models import build_model, count_parameters
from search.budget import BUDGET_FILE, Ledger, format_duration
from search.hpo.spaces import SPACES
from search.report.document import Doc, save_figure
from search.report.load import ArchResults, exported_source
from search.stages.ood import group_rows, headline_rows, load_results
from search.stages.results import SCORE_COLUMN, STATUS_COMPLETED, STATUS_STOPPED
from search.stages.settings import scheduled

LABELS = {"scratch": "Model A (scratch CNN)", "pretrained": "Model B (pretrained MobileNetV2)"}
STUDY = {"scratch": ("86–87%", "6–6.5", "seed_a"), "pretrained": ("82–83%", "8–8.5", "seed_b")}
SECTIONS = ("1. Headline", "2. Best configurations", "3. Learning curves", "4. All trials",
            "5. Hyperparameter importance", "6. Error analysis (test split)",
            "7. How sure, and for whom (test split)", "8. Out of domain (other datasets)",
            "9. Environment and reproduction")


def _pm(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


HEADLINE_COLUMNS = ("model", "test gender acc (%)", "acc 95% CI", "test age MAE", "MAE 95% CI", "seeds × test images",
                    "parameters", "s / epoch (retrain)", "search GPU-hours", "search CPU-hours")
# the retraining summary's columns as the report shows them
SUMMARY_COLUMNS = {"rank": "rank", "search_trial_id": "search trial", "search_val_objective": "search objective (val)",
                   "seeds": "seeds", "gender": "test gender acc (%)", "age": "test age MAE",
                   f"test_{METRIC}_mean": "test objective"}


def headline(doc: Doc, results: dict[str, ArchResults]) -> None:
    doc.heading(SECTIONS[0])
    doc.para("Test-split scores of each architecture's top search configuration, retrained on train+validation "
             "with several seeds: mean ± standard deviation over seeds, and a 95% bootstrap interval over the "
             "test images. The study's figures are its own validation scores, reported for reference.")
    rows = []
    for arch, r in results.items():
        rows += arch_rows(arch, r)
    for arch in results:
        acc, mae, _ = STUDY[arch]
        rows.append({**dict.fromkeys(HEADLINE_COLUMNS, "—"), "model": f"study: {LABELS[arch].split(' (')[0]} "
                     "(validation, reported)", "test gender acc (%)": acc, "test age MAE": mae})
    doc.table(pd.DataFrame(rows))
    doc.para(f"Objective (lower is better) = 0.5 × MAE / {REFERENCE_AGE_MAE} + 0.5 × (1 − accuracy) / "
             f"{REFERENCE_GENDER_ERROR}: 1.0 is the study's model A on both tasks.")
    for arch, r in results.items():
        retrained_configurations(doc, arch, r)


def arch_rows(arch: str, r: ArchResults) -> list[dict[str, str]]:
    """The headline's rows of one architecture: its top configuration's seeds, then their ensemble."""
    row = dict.fromkeys(HEADLINE_COLUMNS, "—")
    row["model"] = LABELS[arch]
    seconds = sum(float(h["time_this_iter_s"].sum()) for h in r.histories.values())
    gpus, cpus = float(r.plan.get("gpus_per_trial", 0) or 0), float(r.plan.get("cpus_per_trial", 1) or 1)
    row["search GPU-hours"], row["search CPU-hours"] = f"{seconds * gpus / 3600:.3f}", f"{seconds * cpus / 3600:.3f}"
    if r.best_model:
        model = build_model(TrainConfig.from_dict(r.best_model["config"]), load_weights=False)
        row["parameters"] = f"{count_parameters(model) / 1e6:.2f}M"
    if len(r.summary):
        top = r.summary.sort_values("rank").iloc[0]  # rank 1, unless every seed of it failed
        row.update({
            "test gender acc (%)": _pm(top["test_gender_acc_mean"], top["test_gender_acc_std"], 100, 1),
            "acc 95% CI": f"{top['test_gender_acc_ci_low']:.1%} – {top['test_gender_acc_ci_high']:.1%}",
            "test age MAE": _pm(top["test_age_mae_mean"], top["test_age_mae_std"]),
            "MAE 95% CI": f"{top['test_age_mae_ci_low']:.2f} – {top['test_age_mae_ci_high']:.2f}",
            "seeds × test images": f"{int(top['seeds'])} × {int(top['n_test'])}",
            "s / epoch (retrain)": f"{top['epoch_seconds_mean']:.1f}",
        })
    if not r.ensemble:
        return [row]
    e = r.ensemble
    ensemble = {**dict.fromkeys(HEADLINE_COLUMNS, "—"), "model": f"{LABELS[arch]}: ensemble of its {len(e['members'])} seeds",
                "test gender acc (%)": f"{e['test_gender_acc'] * 100:.1f}",
                "test age MAE": f"{e['test_age_mae']:.2f}", "seeds × test images": f"1 × {e['n_test']}",
                "parameters": f"{len(e['members'])} × {row['parameters']}"}
    if e.get("test_gender_acc_ci"):  # (manifests written before the ensemble had intervals lack them)
        (acc_low, acc_high), (mae_low, mae_high) = e["test_gender_acc_ci"], e["test_age_mae_ci"]
        ensemble.update({"acc 95% CI": f"{acc_low:.1%} – {acc_high:.1%}", "MAE 95% CI": f"{mae_low:.2f} – {mae_high:.2f}"})
    return [row, ensemble]


def retrained_configurations(doc: Doc, arch: str, r: ArchResults) -> None:
    """Every retrained configuration of ``arch`` (mean ± std over its seeds), and the model marked for export."""
    if len(r.summary):
        s = r.summary
        table = s.assign(rank=s["rank"] + 1,
                         gender=[_pm(m, d, 100, 1) for m, d in zip(s["test_gender_acc_mean"], s["test_gender_acc_std"])],
                         age=[_pm(m, d) for m, d in zip(s["test_age_mae_mean"], s["test_age_mae_std"])])
        doc.para(f"{LABELS[arch]}: every retrained configuration (rank by validation objective in the search).")
        doc.table(table[list(SUMMARY_COLUMNS)].rename(columns=SUMMARY_COLUMNS))
    if r.best_model:
        b = r.best_model
        doc.para(f"Marked {arch} model (for export): rank {b['rank'] + 1}, seed {b['seed']}, trial {b['trial_id']} "
                 f"— test gender accuracy {b['test_gender_acc']:.1%}, age MAE {b['test_age_mae']:.2f} "
                 f"({b['selection']}).")


def best_configurations(doc: Doc, results: dict[str, ArchResults]) -> None:
    doc.heading(SECTIONS[1])
    for arch, r in results.items():
        if not r.best_model:
            doc.para(f"{LABELS[arch]}: no retrained configuration.")
            continue
        best = r.best_model["config"]
        study = TrainConfig.from_dict(load_config_file(STUDY[arch][2])).to_dict()
        searched = [c.split("/", 1)[1] for c in r.trials.columns if c.startswith("config/")]
        keys = searched + [k for k in ("image_size", "epochs", "optimizer", "schedule", "batch_size") if k not in searched]
        rows = [{"field": k, "best": best[k], f"study recipe ({STUDY[arch][2]})": study[k],
                 "changed": "yes" if best[k] != study[k] else ""} for k in keys]
        doc.para(f"{LABELS[arch]} — searched fields first; the rest were fixed for the search.")
        doc.table(pd.DataFrame(rows))


def learning_curves(doc: Doc, results: dict[str, ArchResults], out: Path) -> None:
    doc.heading(SECTIONS[2])
    doc.para("Solid: the marked retrained model (trained on train+validation; the dot is its score on the test "
             "split, taken after the last epoch only — no choice was made on it). Dashed: the best search trial "
             "(train and validation splits).")
    for arch, r in results.items():
        if not r.best_model or r.best_model["trial_id"] not in r.retrain_histories:
            continue
        h = r.retrain_histories[r.best_model["trial_id"]]
        search_best = r.scored
        s = r.histories.get(str(search_best.iloc[0]["trial_id"])) if len(search_best) else None
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        panels = [("loss", "train_loss", "test_loss", "val_loss"), ("gender accuracy", "train_gender_acc",
                  "test_gender_acc", "val_gender_acc"), ("age MAE (years)", "train_age_mae", "test_age_mae", "val_age_mae")]
        for ax, (title, train, test, val) in zip(axes, panels):
            ax.plot(h["training_iteration"], h[train], label="retrain: train", color="C0")
            ax.plot(h["training_iteration"], h[test], "o-", label="retrain: test", color="C1")
            if s is not None:
                ax.plot(s["training_iteration"], s[train], "--", label="search best: train", color="C0", alpha=0.6)
                ax.plot(s["training_iteration"], s[val], "--", label="search best: validation", color="C2")
            ax.set_title(f"{arch}: {title}")
            ax.set_xlabel("epoch")
        axes[0].legend(fontsize=8)
        doc.image(save_figure(fig, out / f"curves_{arch}.png"), f"learning curves, {arch}")


def asha_rungs(plan: dict[str, Any]) -> list[int]:
    """ASHA's milestones: grace × rf^k below max_t."""
    grace, rf, max_t = int(plan.get("grace_period", 1)), int(plan.get("reduction_factor", 2)), int(plan.get("max_epochs", 1))
    rungs, r = [], grace
    while r < max_t:
        rungs.append(r)
        r *= rf
    return rungs


def pareto_front(acc: np.ndarray, mae: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both higher accuracy and lower MAE, sorted by MAE."""
    keep = [i for i in range(len(acc))
            if not any((acc[j] >= acc[i] and mae[j] <= mae[i]) and (acc[j] > acc[i] or mae[j] < mae[i])
                       for j in range(len(acc)))]
    return np.array(sorted(keep, key=lambda i: mae[i]), dtype=int)


def all_trials(doc: Doc, results: dict[str, ArchResults], out: Path) -> None:
    doc.heading(SECTIONS[3])
    if any(r.histories for r in results.values()):
        trial_curves(doc, results, out)
    if any(not r.scored.empty for r in results.values()):
        pareto(doc, results, out)
    for arch, r in results.items():
        counts = r.trials["status"].value_counts().to_dict()
        doc.para(f"{arch}: {len(r.trials)} trials — " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        if r.scored.empty:
            doc.para(f"{arch}: no trial reported a single epoch; the reasons are in {arch}/trials.csv.")
        for note in r.missing:
            doc.para(f"{arch}: {note}; left out of this report.")


def trial_curves(doc: Doc, results: dict[str, ArchResults], out: Path) -> None:
    """Every trial's objective per epoch over ASHA's rungs, and how many trials reached each rung."""
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4), squeeze=False)
    rung_rows = []
    for ax, (arch, r) in zip(axes[0], results.items()):
        for h in r.histories.values():
            if METRIC in h:
                ax.plot(h["training_iteration"], h[METRIC], alpha=0.6, marker=".")
        rungs = asha_rungs(r.plan)
        for rung in rungs:
            ax.axvline(rung, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{arch}: objective per epoch (dotted: ASHA rungs)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(METRIC)
        epochs = r.trials["epochs"]
        rung_rows += [{"architecture": arch, "epoch (rung)": rung, "trials reaching it": int((epochs >= rung).sum())}
                      for rung in [1] + rungs + [int(r.plan.get("max_epochs", epochs.max()))]]
    doc.image(save_figure(fig, out / "trials_objective.png"), "objective per epoch of every trial")
    doc.para("Trials reaching each rung (the last row of each architecture is the full budget):")
    doc.table(pd.DataFrame(rung_rows).drop_duplicates())


def pareto(doc: Doc, results: dict[str, ArchResults], out: Path) -> None:
    """Every trial's validation accuracy against its MAE, with each architecture's Pareto front."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (arch, r) in enumerate(results.items()):
        t = r.scored
        if t.empty:
            continue
        acc, mae = t["score_val_gender_acc"].to_numpy(), t["score_val_age_mae"].to_numpy()
        ax.scatter(mae, acc, color=f"C{i}", alpha=0.7, label=arch)
        front = pareto_front(acc, mae)
        if len(front):
            ax.step(mae[front], acc[front], where="post", color=f"C{i}", linewidth=1.5)
            ax.scatter(mae[front], acc[front], facecolors="none", edgecolors="black", s=90)
    ax.set_xlabel("validation age MAE (years)")
    ax.set_ylabel("validation gender accuracy")
    ax.set_title("every trial (mean of its last epochs); circled: Pareto front")
    ax.legend()
    doc.image(save_figure(fig, out / "pareto.png"), "gender accuracy against age MAE with the Pareto front")


# fewer completed trials than this tell nothing about which parameter matters: Optuna's evaluators then spread the
# importance evenly, which reads as a finding
MIN_IMPORTANCE_TRIALS = 8


def importance(doc: Doc, results: dict[str, ArchResults], out: Path) -> None:
    doc.heading(SECTIONS[4])
    evaluators = {"PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator()}
    try:
        import sklearn  # noqa: F401  (fANOVA needs it)

        evaluators["fANOVA"] = optuna.importance.FanovaImportanceEvaluator(seed=0)
    except ImportError:
        doc.para("fANOVA is left out: it needs scikit-learn, which is not installed. PED-ANOVA needs nothing more.")
    for arch, r in results.items():
        done = 0 if r.study is None else len(r.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if done < MIN_IMPORTANCE_TRIALS:
            doc.para(f"{LABELS[arch]}: {done} completed trial(s), too few to tell which parameter matters (it takes "
                     f"{MIN_IMPORTANCE_TRIALS}); a longer --budget or more --num-samples gives more.")
        elif rows := param_importances(doc, arch, r.study, evaluators):
            doc.para(f"{LABELS[arch]}: importance of each searched parameter for the objective (Optuna's evaluators "
                     f"on the study's {done} completed trials).")
            doc.table(pd.DataFrame(rows).rename_axis("parameter").reset_index())
        params = [c for c in r.trials.columns if c.startswith("config/")]
        if params and not r.scored.empty:
            doc.image(objective_vs_params(r.scored, params, out / f"params_{arch}.png"),
                      f"objective against each searched parameter, {arch}")


def param_importances(doc: Doc, arch: str, study, evaluators: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each evaluator's importances of the study's parameters; an evaluator that fails says why in one line."""
    rows = {}
    for label, evaluator in evaluators.items():
        try:
            rows[label] = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError) as err:
            doc.para(f"{LABELS[arch]}: {label} importance not available ({err}).")
    return rows


# log-scaled in the report exactly where the search samples them on a log scale
LOG_PARAMS = tuple(sorted({name for space in SPACES.values() for name, dist in space.items()
                           if getattr(dist, "log", False)}))


def log_ticks(low: float, high: float, max_ticks: int = 4) -> list[float]:
    """Round tick positions for a log axis from ``low`` to ``high``: at most ``max_ticks`` of 1-2-5, 1-3 or 1 × 10^k,
    so labels never crowd (matplotlib labels every minor tick of a range under a decade, and they overlap)."""
    if not (low > 0 and high > 0):
        return []
    low, high = min(low, high), max(low, high)
    ticks: list[float] = []
    for mults in ((1, 2, 5), (1, 3), (1,)):
        ticks = [float(f"{m * 10.0 ** k:.6g}") for k in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
                 for m in mults if low <= m * 10.0 ** k <= high]
        if len(ticks) <= max_ticks:
            break
    if len(ticks) < 2:  # a narrow range: its two ends, rounded
        ticks = sorted({float(f"{low:.2g}"), float(f"{high:.2g}")})
    return ticks[:: max(1, math.ceil(len(ticks) / max_ticks))]


def objective_vs_params(t: pd.DataFrame, params: list[str], path: Path) -> Path:
    """One panel per searched parameter: each trial's ranking score against the parameter's value."""
    cols = 4
    rows = (len(params) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3 * rows), squeeze=False)
    for ax, param in zip(axes.flat, params):
        for status, marker in ((STATUS_COMPLETED, "o"), (STATUS_STOPPED, "x")):
            part = t[t["status"] == status]
            ax.scatter(part[param], part[SCORE_COLUMN], marker=marker, alpha=0.7, label=status)
        name = param.split("/", 1)[1]
        ax.set_title(name)
        values = pd.to_numeric(t[param], errors="coerce").dropna()
        if name in LOG_PARAMS and len(values) and (values > 0).all():
            ax.set_xscale("log")
            ticks = log_ticks(float(values.min()), float(values.max()))
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FixedFormatter([f"{v:g}" for v in ticks]))
            ax.xaxis.set_minor_formatter(NullFormatter())
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    axes.flat[0].set_ylabel(METRIC)
    axes.flat[0].legend(fontsize=7)
    return save_figure(fig, path)


def error_analysis(doc: Doc, results: dict[str, ArchResults], faces: Faces, out: Path) -> None:
    doc.heading(SECTIONS[5])
    doc.para("On the held-out test split, for each architecture's marked model.")
    by_name = {n: i for i, n in enumerate(faces.names)}
    for arch, r in results.items():
        if not r.best_model or r.best_model["trial_id"] not in r.predictions:
            continue
        p = r.predictions[r.best_model["trial_id"]].copy()
        p["band"] = [age_band(int(a)) for a in p["age"]]
        p["correct"], p["abs_err"] = per_face(p)
        bands = [age_band(lo) for lo, _ in AGE_BANDS]
        rows = []
        for band in bands:
            part = p[p["band"] == band]
            if len(part):
                rows.append({"age band": band, "images": len(part), "age MAE": part["abs_err"].mean(),
                             "gender acc": part["correct"].mean()})
        for g, label in ((0, "male"), (1, "female")):
            part = p[p["gender"] == g]
            rows.append({"age band": f"all {label}", "images": len(part), "age MAE": part["abs_err"].mean(),
                         "gender acc": part["correct"].mean()})
        rows.append({"age band": "all", "images": len(p), "age MAE": p["abs_err"].mean(), "gender acc": p["correct"].mean()})
        doc.para(f"{LABELS[arch]}:")
        doc.table(pd.DataFrame(rows))
        confidence = (p["p_female"] - 0.5).abs()
        worst_age = p.sort_values("abs_err", ascending=False).head(6)
        worst_gender = p[p["correct"] == 0].assign(conf=confidence).sort_values("conf", ascending=False).head(6)
        shown = pd.concat([worst_age, worst_gender])
        shown = shown[shown["name"].isin(by_name)]
        if shown.empty:
            continue
        fig, axes = plt.subplots(2, 6, figsize=(14, 5.4), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for row_axes, part in ((axes[0], worst_age), (axes[1], worst_gender)):
            for ax, (_, row) in zip(row_axes, part.iterrows()):
                if row["name"] not in by_name:
                    continue
                ax.imshow(faces.images[by_name[row["name"]]].permute(1, 2, 0).numpy())
                sex = lambda v: "F" if predicted_female(v) else "M"  # noqa: E731
                ax.set_title(f"true {int(row['age'])} {sex(row['gender'])}\npred {row['pred_age']:.0f} "
                             f"{sex(row['p_female'])} ({max(row['p_female'], 1 - row['p_female']):.2f})", fontsize=8)
        fig.suptitle(f"{arch}: largest age errors (top), most confident gender errors (bottom)")
        doc.image(save_figure(fig, out / f"worst_{arch}.png"), f"worst test predictions, {arch}")


def sureness_and_groups(doc: Doc, results: dict[str, ArchResults]) -> None:
    doc.heading(SECTIONS[6])
    doc.para(f"For the model each architecture exports. Age interval: split-conformal at {DEFAULT_COVERAGE:.0%}, its "
             "width scaled by each face's spread of its test-time views' ages; "
             "P(female): temperature scaling; both fitted on test-split predictions (the retrained models trained on "
             f"train+validation) and checked on {CHECK_SPLITS} random halves of the test split, one half fitting, the "
             "other scored (mean, and 5th–95th percentile over the halves). Groups: the race field of the UTKFace "
             "names, and true gender × race; 95% bootstrap intervals over each group's faces.")
    for arch, r in results.items():
        source = exported_source(r)
        if source is None:
            continue
        what, p = source
        c = calibrate(p["age"], p["pred_age"], p["gender"] == 1, p["p_female"], spread=p.get(SPREAD))
        check = c["check"]

        def span(key: str, scale: float = 1.0, digits: int = 1) -> str:
            v = check.get(key)
            return "—" if v is None else (f"{v['mean'] * scale:.{digits}f} ({v['p5'] * scale:.{digits}f}–"
                                          f"{v['p95'] * scale:.{digits}f})")

        doc.para(f"{LABELS[arch]}, {what}:")
        doc.table(pd.DataFrame([
            {"what": f"age interval coverage (%), nominal {DEFAULT_COVERAGE:.0%}", "held-out halves": span("coverage", 100)},
            {"what": "age interval mean width (years)", "held-out halves": span("width")},
            {"what": "gender ECE (%), before temperature scaling", "held-out halves": span("ece_before", 100, 2)},
            {"what": f"gender ECE (%), after (T = {c['temperature']:.2f} on all {c['n']} faces)",
             "held-out halves": span("ece_after", 100, 2)}]))
        for label, part in fairness(p).items():
            table = part["table"]
            shown = table.assign(**{
                "gender acc (%)": [f"{a:.1%} ({lo:.1%}–{hi:.1%})" for a, lo, hi in
                                   zip(table["gender_acc"], table["acc_low"], table["acc_high"])],
                "age MAE": [f"{m:.2f} ({lo:.2f}–{hi:.2f})" for m, lo, hi in
                            zip(table["age_mae"], table["mae_low"], table["mae_high"])]})
            doc.table(shown[[c for c in ("sex", "race") if c in shown] + ["faces", "gender acc (%)", "age MAE"]])
            gaps = part["gaps"]
            if gaps:
                doc.para(f"Largest gaps ({'race' if label == 'race' else 'gender × race'}, groups of {MIN_GROUP_FACES}+ faces): gender "
                         f"accuracy {gaps['gender_acc']['gap_points']:.1f} points ({gaps['gender_acc']['best']} vs "
                         f"{gaps['gender_acc']['worst']}); age MAE {gaps['age_mae']['gap_years']:.2f} years "
                         f"({gaps['age_mae']['worst']} vs {gaps['age_mae']['best']}). Where the groups' intervals "
                         "overlap, the gap may be noise.")


def image_sizes(settings: dict[str, Any], results: dict[str, ArchResults]) -> str:
    """The faces' side in pixels, per architecture where a preset's schedule gives one its own."""
    schedule = settings.get("arch_schedule") or {}
    sizes = {arch: scheduled(schedule, arch, "image_size", settings.get("image_size")) for arch in results}
    if len(set(sizes.values())) <= 1:
        return f"{next(iter(sizes.values()), settings.get('image_size'))} px"
    return ", ".join(f"{arch} {size} px" for arch, size in sizes.items())


def retraining_seeds(settings: dict[str, Any], results: dict[str, ArchResults]) -> str:
    """The seeds and lengths the retraining ran, per architecture (a budget's plan may run fewer seeds, or longer
    runs, than the settings allow); the settings' seeds where no retraining has run yet."""
    ran = {arch: r.runs for arch, r in results.items() if {"seed", "epochs"} <= set(r.runs.columns)}
    if not ran:
        planned = ", ".join(str(s) for s in range(int(settings.get("retrain_seeds", 1))))
        return f"{planned} (planned; none has run)"
    return "; ".join(f"{arch} {', '.join(str(int(s)) for s in sorted(runs['seed'].unique()))} "
                     f"({', '.join(str(int(e)) for e in sorted(runs['epochs'].unique()))} epochs)"
                     for arch, runs in ran.items())


def split_description(split: Split) -> str:
    """The split's part sizes, fractions and seed, as the split file records them."""
    parts = "/".join(str(len(getattr(split, part))) for part in ("train", "val", "test"))
    fractions = "/".join(f"{f:.0%}" for f in split.fractions)
    return f"{parts} images ({fractions}), stratified by gender × age band, seed {split.seed} ({SPLIT_FILE})"


def out_of_domain(doc: Doc, root: Path, results: dict[str, ArchResults]) -> None:
    """The --ood sets beside the test split (search.stages.ood); nothing was chosen on them."""
    scored = load_results(root)
    doc.heading(SECTIONS[7])
    if not scored:
        doc.para("No labelled set from outside the training data was given; score some with --ood DATA (a folder or "
                 "a labels CSV, repeatable) and --stage report.")
        return
    sets = "; ".join(f"{s['name']}: {s['scored']} of {s['listed']} labelled files scored, read as {s['read_as']}"
                     + (f" (skipped: {', '.join(f'{n} {r}' for r, n in s['skipped'].items())})" if s["skipped"] else "")
                     for s in scored["sets"])
    doc.para(f"Labelled sets from outside the training data ({sets}), scored after the retraining; no choice of "
             "the search, the retraining or the export read them. Figures with 95% bootstrap intervals over the "
             "faces; the interval is the exported calibration's (fitted on the test split). A range hit is a "
             "predicted age that rounds into a range label.")
    test_rows = []
    for arch, r in results.items():
        source = exported_source(r)
        if source is not None:
            _, p = source
            correct, abs_err = per_face(p)
            held = calibrate(p["age"], p["pred_age"], p["gender"] == 1, p["p_female"], spread=p.get(SPREAD))["check"]
            test_rows.append({"architecture": arch, "set": "test split (in domain)", "model": f"exported: {source[0]}",
                              "faces": len(p), "gender accuracy (%)": f"{100 * correct.mean():.1f}",
                              "age MAE (years)": f"{abs_err.mean():.2f}",
                              f"{DEFAULT_COVERAGE:.0%} interval coverage (%)": "—" if "coverage" not in held else
                              f"{100 * held['coverage']['mean']:.1f} (held-out halves)"})
    doc.table(pd.DataFrame(test_rows + headline_rows(scored)).fillna("—"))
    groups = group_rows(scored)
    if len({(g["set"], g["group"]) for g in groups}) > len({g["set"] for g in groups}):
        doc.para("Exported models per group (race, or the labels file's group column):")
        doc.table(pd.DataFrame(groups))


def environment(doc: Doc, root: Path, settings: dict[str, Any], results: dict[str, ArchResults],
                split: Split) -> None:
    doc.heading(SECTIONS[8])
    gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none visible"
    rows = [("python", sys.version.split()[0]), ("platform", platform.platform()), ("processor", platform.machine()),
            ("GPUs (report machine)", gpu), ("torch", torch.__version__), ("ray", metadata.version("ray")),
            ("optuna", optuna.__version__), ("search seed (TPE and trials)", settings.get("seed")),
            ("retraining seeds", retraining_seeds(settings, results)), ("split", split_description(split)),
            ("data", " + ".join(split_sources(settings.get("data_dir")))), ("image size", image_sizes(settings, results)),
            ("images used", settings.get("max_images") or "all")]
    for arch, r in results.items():
        if r.plan:
            rows.append((f"{arch} search", f"{r.plan.get('num_samples')} trials, ≤{r.plan.get('max_epochs')} epochs, "
                         f"ASHA grace {r.plan.get('grace_period')}, reduction {r.plan.get('reduction_factor')}, "
                         f"{r.plan.get('concurrency')} concurrent, {r.plan.get('cpus_per_trial')} CPU + "
                         f"{r.plan.get('gpus_per_trial')} GPU per trial"))
    ledger = Ledger(root) if (root / BUDGET_FILE).is_file() else None
    if ledger is not None and ledger.budget_s:
        spent = ", ".join(f"{stage} {format_duration(sec)}" for stage, sec in ledger.spent.items())
        rows.append(("time budget", f"{format_duration(ledger.budget_s)}: {spent or 'nothing spent yet'}; "
                     f"{format_duration(ledger.total_spent())} in the stages, the rest in starting Python, ending the "
                     "stages and this report"))
    doc.table(pd.DataFrame(rows, columns=["item", "value"]))
    doc.para("The command that ran the search:")
    doc.code(settings.get("command", "(unknown)"))
    doc.para("To reproduce: run the same command on a fresh checkout (README quick start). To continue an "
             "interrupted run add --resume; to rebuild this report alone:")
    doc.code(f"python search/run.py --name {root.name} --storage-path {root.parent} --stage report")


