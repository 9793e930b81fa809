"""The comparison report of an experiment: ``report/report.md``, a self-contained ``report/report.html``, PNGs.

Everything is found through the experiment's manifest (trials.csv, each trial's progress.csv, the Optuna
study, the retraining results), so the report can be rebuilt at any time with ``--stage report``. Rendering a
report needs no Ray.
"""
from __future__ import annotations

import json
from pathlib import Path

from data_utils.dataset import Faces, Split
from data_utils.sources import split_sources
from models import ARCHS
from search.report.document import Doc
from search.report.load import load_arch
from search.report.sections import (
    all_trials,
    best_configurations,
    environment,
    error_analysis,
    headline,
    importance,
    learning_curves,
    out_of_domain,
    sureness_and_groups,
)
from search.stages import manifest
from search.stages.settings import SETTINGS_FILE


def write_report(root: Path, faces: Faces, split: Split) -> Path:
    """Build ``root/report/`` from what the experiment folder holds; returns the report folder."""
    root = Path(root)
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    settings_file = root / SETTINGS_FILE
    settings = json.loads(settings_file.read_text())["settings"] if settings_file.is_file() else {}
    results = {a: r for a in ARCHS if (r := load_arch(root, a)) is not None}
    if not results:
        raise manifest.ManifestError(f"{root} holds no finished search ({manifest.MANIFEST_FILE} lists none); run the "
                                     "search stage first")
    doc = Doc()
    doc.heading(f"Age and gender: scratch CNN vs pretrained MobileNetV2 — experiment '{root.name}'", 1)
    doc.para(f"{len(split.train)} training, {len(split.val)} validation and {len(split.test)} test images "
             f"(de-duplicated faces from {' + '.join(split_sources(settings.get('data_dir'))) or '?'}); the test split was never seen by "
             "a search trial.")
    headline(doc, results)
    best_configurations(doc, results)
    learning_curves(doc, results, out)
    all_trials(doc, results, out)
    importance(doc, results, out)
    error_analysis(doc, results, faces, out)
    sureness_and_groups(doc, results)
    out_of_domain(doc, root, results)
    environment(doc, root, settings, results, split)
    (out / "report.md").write_text(doc.markdown())
    (out / "report.html").write_text(doc.html(f"facetune report: {root.name}"))
    return out
