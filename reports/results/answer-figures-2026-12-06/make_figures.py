"""The answer's 24 runs (the study's four models and their _linear twins, seeds 0-2, 15 epochs) drawn by today's
report figures, from the metrics kept in the two snapshots; the classical codecs' points from standin-rd's
rate_distortion.json (the baselines stage on the same stand-in test split). From the repo root:

    PYTHONPATH=. python reports/results/answer-figures-2026-12-06/make_figures.py
"""

import dataclasses
import json
from pathlib import Path

import pandas as pd

from pipeline.lib import figures, figures_rd, figures_study, plotting, rate_distortion, report_text, schema, stats
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
params = load_params(Path("params.yaml"))
variants = list(dict.fromkeys(runs.variant))
specs = {v: dataclasses.asdict(params.variant(v)) for v in variants}
labels = stats.position_labels(specs)
colours = plotting.variant_colours(variants, specs)
figures.seed_spread(
    runs.assign(variant=runs.variant.map(labels)),
    summary.rename(index=labels),
    OUT / "findings_seed_spread.png",
    {labels[v]: colour for v, colour in colours.items()},
)
figures_study.study_comparison(
    runs.assign(variant=runs.variant.map(labels)), study.rename(index=labels), OUT / "study_comparison.png"
)
figures_study.against_published(
    runs, study, specs, report_text.PUBLISHED_WEIGHTS_BAND, OUT / "against_published.png", colours
)
per_class = pd.DataFrame({name: pd.DataFrame(r).set_index("char").psnr for name, r in runs.per_class.items()})
per_class = per_class.T.groupby(runs.variant, sort=False).mean().T
figures.per_class_psnr(per_class, summary.mse_mean.idxmin(), OUT / "per_class_psnr.png", colours)
codecs = [
    row
    for row in json.loads((RESULTS / "standin-rd" / "rate_distortion.json").read_text())
    if row["kind"] == "baseline"
]
rd = rate_distortion.assemble(report_text.variant_means(runs), codecs)
figures_rd.rate_distortion(rd, OUT / "rate_distortion.png", colours)
figures_study.dead_units(runs, study, OUT / "dead_units.png", colours)
for model in (v for v in variants if f"{v}_linear" in variants):
    ahead = per_class[f"{model}_linear"] - per_class[model]
    print(f"{model}_linear ahead of {model} on each character by {ahead.min():.2f}-{ahead.max():.2f} dB")
print(summary[["n", "mse_mean", "mse_std", "dead_latent_units_mean"]].to_string())
