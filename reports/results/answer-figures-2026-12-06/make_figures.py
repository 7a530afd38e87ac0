"""The answer's 24 runs (the study's four models and their _linear twins, seeds 0-2, 15 epochs) drawn by today's
report figures, from the metrics and histories kept in the two snapshots; the classical codecs' points from
standin-rd's rate_distortion.json (the baselines stage on the same stand-in test split). From the repo root:

    PYTHONPATH=. python reports/results/answer-figures-2026-12-06/make_figures.py
"""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import yaml

from pipeline import paths
from pipeline.lib import (
    figures,
    figures_rd,
    figures_study,
    plotting,
    rate_distortion,
    report_findings,
    report_tables,
    report_text,
    schema,
    stats,
)
from pipeline.lib.config import load_params

RESULTS = Path("reports/results")
RUNS = ("standin-study4-cpu-15ep", "standin-linear4-cpu-15ep")
OUT = RESULTS / "answer-figures-2026-12-06"

metrics = {
    path.stem: schema.load(path)
    for snapshot in RUNS
    for path in sorted((RESULTS / snapshot / "metrics").glob("*.json"))
}
runs = report_text.results_table(metrics)
summary = stats.aggregate(runs, report_text.SEED_COLUMNS, report_text.SEED_FLOORS, report_text.SEED_CEILINGS)
study = report_text.results_table(
    {path.stem: schema.load(path) for path in sorted((RESULTS / RUNS[0] / "study").glob("*.json"))}
).set_index("variant")
histories = {}
for snapshot in RUNS:
    for path in sorted((RESULTS / snapshot / "history").glob("*.csv")):
        histories.setdefault(path.stem.rsplit("-", 1)[0], []).append(pd.read_csv(path))
params = load_params(Path("params.yaml"))
variants = list(dict.fromkeys(runs.variant))
specs = {v: dataclasses.asdict(params.variant(v)) for v in variants}
labels = plotting.layer_labels(variants, specs)
colours, markers = plotting.variant_colours(variants, specs), plotting.variant_markers(variants, specs)

spread_summary = summary.rename(index=labels)
figures.seed_spread(
    figures.named(runs, labels), spread_summary, OUT / "findings_seed_spread.png", figures.relabelled(colours, labels)
)
figures_study.study_comparison(figures.named(runs, labels), study.rename(index=labels), OUT / "study_comparison.png")
band = report_tables.PUBLISHED_WEIGHTS_BAND
figures_study.against_published(runs, study, specs, band, OUT / "against_published.png", colours)
labelled_markers = figures.relabelled(markers, labels)
figures_study.dead_units(
    figures.named(runs, labels), study, OUT / "dead_units.png", figures.relabelled(colours, labels), labelled_markers
)
keras_log = yaml.safe_load(paths.REFERENCE_FILE.read_text())["keras_log"]
figures.loss_curves(
    figures.relabelled(histories, labels),
    figures.relabelled(keras_log, labels),
    OUT / "loss_curves.png",
    figures.relabelled(colours, labels),
    labelled_markers,
)
per_class = figures.per_class_means(runs)
figures.per_class_psnr(per_class, summary.mse_mean.idxmin(), OUT / "per_class_psnr.png", colours)
codecs = [
    row
    for row in json.loads((RESULTS / "standin-rd" / "rate_distortion.json").read_text())
    if row["kind"] == "baseline"
]
rd = rate_distortion.assemble(report_text.variant_means(runs), codecs)
figures_rd.rate_distortion(rd, OUT / "rate_distortion.png", colours)

for model in (v for v in variants if f"{v}_linear" in variants):
    ahead = per_class[f"{model}_linear"] - per_class[model]
    print(f"{model}_linear ahead of {model} on each character by {ahead.min():.2f}-{ahead.max():.2f} dB")
print(summary[["n", "mse_mean", "mse_std", "dead_latent_units_mean"]].to_string())

reference = yaml.safe_load(paths.REFERENCE_FILE.read_text())
tests = stats.pairwise_welch(runs, "mse")
collapsed = report_findings.collapsed_variants(runs)
for line in report_findings.findings(summary, tests, specs, reference, collapsed)[2:]:  # the decoder families
    print(line)
print(*report_findings.twin_finding(summary, tests, runs))
print(report_tables.protocol_offset(runs))
