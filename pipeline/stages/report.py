"""DVC stage `report`: compare every evaluated run in reports/report.md and reports/figures/*.png.

Runs are (variant, seed) pairs. The report opens with findings generated from the numbers: the variant
with the lowest mean test MSE over seeds, and which differences exceed the seed-to-seed spread (Welch's t-test,
Benjamini-Hochberg adjusted). It also logs to MLflow as a `report` run and becomes the parent of the runs
it compares, so the MLflow UI groups one pipeline's runs together.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline import paths, provenance, tracking
from pipeline.cli import run_stage
from pipeline.lib import figures, prepared, rate_distortion, report_tables, report_text, schema, stats
from pipeline.lib.config import Params, run_name
from pipeline.lib.config_sections import OFFICIAL_SOURCE
from pipeline.lib.idx import parse_sha256sums
from pipeline.lib.io import DataError, write_text
from pipeline.lib.report_findings import counted

OFFICIAL_SUMS = Path(__file__).resolve().parents[2] / OFFICIAL_SOURCE  # the code's copy, whatever the project root


def write_report(params: Params) -> tuple[Path, list[Path], pd.DataFrame, pd.DataFrame]:
    results = report_text.results_table({run_name(v, s): _metrics(v, s) for v, s in params.runs()})
    study = report_text.results_table({model: _study_metrics(model) for model in params.study.models})  # by variant
    summary = stats.aggregate(results, report_text.SEED_COLUMNS, report_text.SEED_FLOORS, report_text.SEED_CEILINGS)
    tests = stats.pairwise_welch(results, "mse")
    specs = {name: dataclasses.asdict(params.variant(name)) for name in params.trained()}
    reference = yaml.safe_load(paths.REFERENCE_FILE.read_text())
    means = report_text.variant_means(results)
    rd = rate_distortion.assemble(means, rate_distortion.load_baselines(paths.baselines_file()))
    rate_distortion.write_json(rd, paths.reports_dir() / "rate_distortion.json")
    histories = {}
    for name, row in results.iterrows():
        histories.setdefault(row.variant, []).append(pd.read_csv(paths.history_file(name)))
    first_seed = results.groupby("variant", sort=False).head(1).index
    originals = prepared.load_split(paths.prepared_dir(), "test")[0][results.sample_indices.iloc[0]]
    samples = {name: np.load(paths.samples_file(name)) for name in first_seed}
    paths.figures_dir().mkdir(parents=True, exist_ok=True)
    figure_paths = figures.report_figures(
        results,
        summary,
        means,
        rd,
        histories,
        originals,
        samples,
        study,
        reference["keras_log"],
        paths.figures_dir(),
        specs,
    )
    report = paths.reports_dir() / "report.md"
    captions = {p.name: figures.REPORT_FIGURES[p.stem] for p in figure_paths}
    recipes = {v: {k: getattr(params.train_for(v), k) for k in report_tables.RECIPE_KEYS} for v in params.trained()}
    pinned = parse_sha256sums(OFFICIAL_SUMS)
    data = report_text.data_line(prepared.load_manifest(paths.prepared_dir()), pinned)
    text = report_text.render_markdown(results, summary, tests, specs, reference, captions, rd, study, recipes, data)
    write_text(report, text)
    return report, figure_paths, results, summary


def _metrics(variant: str, seed: int) -> dict:
    return _load(paths.metrics_file(run_name(variant, seed)), provenance.stage_name("evaluate", variant, seed))


def _study_metrics(model: str) -> dict:
    return _load(paths.study_metrics_file(model), f"study@{model}")


def _load(path: Path, stage: str) -> dict:
    """A metrics JSON, or an error naming the stage that writes it."""
    if not path.exists():
        raise DataError(f"{path}: missing; run the {stage.split('@')[0]} stage first (dvc repro {stage})")
    return schema.load(path)


def log_report(
    tracker: tracking.Tracker,
    report: Path,
    figure_paths: list[Path],
    summary: pd.DataFrame,
    results: pd.DataFrame,
    seconds: float,
) -> None:
    """One `report` run holding the report, the per-variant means and the seconds write_report took (the stage's
    work, apart from imports and logging); the training runs become its children, tagged with the digest of their
    evaluate stage's dvc.lock entry."""
    with tracker.run("report", tracking.run_tags("report")) as run:
        run.log_artifact(report)
        run.log_artifact(report.with_name("rate_distortion.json"))
        for figure in figure_paths:
            run.log_artifact(figure, "figures")
        run.log_metrics(
            {
                f"{variant}.{column}": float(value)
                for variant, row in summary.iterrows()
                for column, value in row.items()
                if column.endswith(("_mean", "_std")) and np.isfinite(value)
            }
            | {"report_seconds": seconds}
        )
    lock = provenance.read_lock(provenance.dvc_root())
    for _, row in results[[isinstance(r, str) for r in results.mlflow_run_id]].iterrows():
        child = tracker.attach(row.mlflow_run_id)
        if child is None:
            print(f"report: run {row.mlflow_run_id} not found in the tracking store; not grouped")
            continue
        stage = provenance.stage_name("evaluate", row.variant, row.seed)
        child.set_tags(
            {"mlflow.parentRunId": run.run_id, "report.dvc.evaluate_lock_sha256": provenance.entry_digest(lock, stage)}
        )


def _report(params: Params) -> str:
    started = time.perf_counter()
    report, figure_paths, results, summary = write_report(params)
    seconds = time.perf_counter() - started
    log_report(tracking.MlflowTracker(), report, figure_paths, summary, results, seconds)
    runs = f"{counted(len(results), 'run')} of {counted(len(summary), 'variant')}"
    return f"wrote {report} and {len(figure_paths)} figures ({runs}) in {seconds:.1f} s"


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        "report",
        __doc__,
        lambda params, _: _report(params),
        argv,
        per_run=False,
        expected=(DataError, *tracking.STORE_ERRORS),
    )


if __name__ == "__main__":
    sys.exit(main())
