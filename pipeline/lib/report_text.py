"""The report's text: reports/report.md, its tables, and the findings of pipeline.lib.report_findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.lib import rate_distortion
from pipeline.lib.report_findings import (
    collapsed_finding,
    collapsed_variants,
    dead_units_finding,
    findings,
    plus_minus,
    published_weights_finding,
    spread_format,
    twin_finding,
)
from pipeline.lib.report_tables import (
    PUBLISHED_WEIGHTS_BAND,
    compression_table,
    markdown_table,
    markdown_varying,
    protocol_offset,
    protocol_table,
    published_weights_check,
    recipe_table,
    study_table,
)

SEED_COLUMNS = ["mse", "psnr", "psnr_pooled", "ssim", "dead_latent_units", "effective_latent_dims", "val_loss"]
SEED_FORMATS = {  # counts to a tenth: what a mean over a few seeds can say of them
    "mse": ".5f",
    "val_loss": ".5f",
    "ssim": ".4f",
    "dead_latent_units": ".1f",
    "effective_latent_dims": ".1f",
}
SEED_FLOORS = {"mse": 0.0, "dead_latent_units": 0.0, "effective_latent_dims": 0.0, "val_loss": 0.0}
SEED_CEILINGS = {"ssim": 1.0, "dead_latent_units": "latent_dim", "effective_latent_dims": "latent_dim"}
RUN_COLUMNS = [
    "variant",
    "seed",
    "epochs",
    "mse",
    "psnr",
    "ssim",
    "dead_latent_units",
    "active_latent_units_per_image",
    "effective_latent_dims",
]
FIDELITY_COLUMNS = ["classifier_accuracy", "classifier_accuracy_originals", "psnr", "ssim"]


def results_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """One row per run (run name -> its metrics JSON), indexed by run name, with the "run" block's keys as columns."""
    rows = [{**m, **m["run"], "run": name} for name, m in metrics.items()]
    return pd.DataFrame(rows, columns=None if rows else ["run", "variant"]).set_index("run")


def variant_means(results: pd.DataFrame) -> pd.DataFrame:
    """Each variant's mean over its seeds; NaN where a seed lacks the value, not the mean of the other seeds."""
    numeric = results.select_dtypes("number").drop(columns="seed")
    return numeric.groupby(results.variant, sort=False).mean(skipna=False)


def decoder_section(means: pd.DataFrame) -> list[str]:
    """The encoder -> decoder pass's numbers, or where it reproduces the autoencoder to the bit, a sentence saying so
    instead of the same numbers again."""
    decoder = means[["mse_decoder", "psnr_decoder", "ssim_decoder", "max_abs_diff_decoder"]]
    if (decoder.max_abs_diff_decoder == 0).all():
        return [
            "Every variant's encoder → decoder pass reconstructs each test image to the bit as its autoencoder does "
            "(max_abs_diff_decoder 0), so its MSE, PSNR and SSIM are the autoencoder's above."
        ]
    return [markdown_table(decoder)]


def seed_table(summary: pd.DataFrame) -> pd.DataFrame:
    """mean ± std [95% interval] per variant, as text cells."""
    cells = {}
    for column in SEED_COLUMNS:
        fmt = SEED_FORMATS.get(column, ".2f")
        cells[column] = [_seed_cell(row, column, fmt) for _, row in summary.iterrows()]
    return pd.DataFrame({"n": summary.n, **cells}, index=summary.index)


def _seed_cell(row: pd.Series, column: str, fmt: str) -> str:
    low, high = row[f"{column}_ci_low"], row[f"{column}_ci_high"]
    fmt = spread_format(row[f"{column}_std"], fmt)
    return plus_minus(row, column, fmt) + ("" if np.isnan(low) else f" [{low:{fmt}}, {high:{fmt}}]")


def render_markdown(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    tests: pd.DataFrame,
    specs: dict,
    reference: dict,
    captions: dict[str, str],
    rd: pd.DataFrame,
    study: pd.DataFrame,
    recipes: dict[str, dict],
    data: str,
) -> str:
    """reports/report.md; captions: each figure's file name and the caption to print under it."""
    means = variant_means(results)
    band = PUBLISHED_WEIGHTS_BAND
    check = published_weights_check(results, study, band)
    protocol = protocol_table(results, study)
    n_seeds = int(summary.n.min())
    parts = [
        "# CompressNet report",
        "",
        data,  # first: which data every number below is of (a stand-in's are not the study's)
        "",
        f"SSIM window: {results.ssim_window.iloc[0]}. "
        "PSNR is the study's per-image mean (data range = image max - min); pooled PSNR is 10·log10(1/MSE).",
        "",
        "## Findings",
        "",
        *findings(summary, tests, specs, reference, collapsed_variants(results)),
        *twin_finding(summary, tests, results),
        *dead_units_finding(results, study),
        *published_weights_finding(check, band),
        *collapsed_finding(results),
        rate_distortion.moonshot_finding(rd),
        *rate_distortion.quality_target_findings(means, reference["train_flops_per_image"]["model01"]),
        "",
        *recipe_section(recipes, reference),
        "## Mean ± std over seeds [95% t-interval of the mean]",
        "",
        markdown_table(seed_table(summary)),
        "",
        "## Pairwise differences in test MSE (Welch's t-test, Benjamini-Hochberg adjusted over the "
        f"{int(tests.p.notna().sum())} testable pairs)",
        "",
        pairwise_markdown(tests),
        "",
        "## Every run",
        "",
        markdown_varying(results[RUN_COLUMNS], index=False),
        "",
        *study_sections(study, check, band),
        "## The study's table beside ours: its five numbers, with pooled PSNR and dead latent units measured here",
        "",
        markdown_table(study_table(means, n_seeds, reference, study).reset_index(), index=False),
        "",
        f"The study trained {reference['epochs']} epochs, one run per model, and measured 10 random unseeded "
        "test images. Its val loss is on its test set, ours on images held out of the train split: set our test MSE "
        "(mse) beside its val loss, not our val_loss.",
        "",
        "## Encoder → decoder run separately (mean over seeds)",
        "",
        *decoder_section(means),
        "",
        f"## The study's protocol ({len(results.seed_protocol.iloc[0]['indices'])} seeded test images), per run and "
        "for the published weights",
        "",
        markdown_table(protocol),
        "",
        protocol_offset(results),
        "",
        "## Compression (mean over seeds)",
        "",
        markdown_varying(compression_table(means)),
        "",
        "Bytes per image are real streams (pipeline.lib.codec) of the whole test split, headers and side information "
        "included. uint8: per-dimension scale/offset calibrated on the train split, carried in the stream; "
        "uint8_range: the same codes range-coded under a Gaussian per dimension (its mean and spread in the stream); "
        "entropy: integer latents range-coded under the variant's learned prior (prior_bits_per_image is the "
        "prior's own estimate). A unit is dead when it outputs 0 for every test image; effective dims hold 99% of "
        "the latent variance.",
        "",
        "## Rate–distortion: variants beside classical codecs (reports/rate_distortion.json)",
        "",
        markdown_table(
            rd.sort_values(["kind", "method", "bytes_per_image"], ascending=[False, True, True]), index=False
        ),
        "",
        "## Semantic fidelity: the classifier stage's test accuracy (mean over seeds)",
        "",
        markdown_varying(means.reindex(columns=FIDELITY_COLUMNS)),
        "",
        "",
        "## Figures",
        "",
        *[
            line
            for name, caption in captions.items()
            for line in (f"![{Path(name).stem}](figures/{name})", "", caption, "")
        ],
    ]
    return "\n".join(parts)


def recipe_section(recipes: dict[str, dict], reference: dict) -> list[str]:
    """The recipes the variants trained with beside the study's, and what a cell that is not a number means."""
    table = recipe_table({**recipes, "the study": {"epochs": reference["epochs"], **reference["recipe"]}})
    notes = {
        "steps_per_epoch –: one full pass over the train split.": table.steps_per_epoch.isna().any(),
        "precision auto: bf16 autocast where the hardware has native bf16, fp32 elsewhere (each run's model file and "
        "MLflow run record what it used).": (table.precision == "auto").any(),
    }
    return [
        "## Training recipe",
        "",
        markdown_table(table, index=False),
        "",
        *[" ".join(n for n, on in notes.items() if on)],
        "",
    ]


def study_sections(study: pd.DataFrame, check: pd.DataFrame, band: float) -> list[str]:
    """The published weights as the study stage measured them, and each run of a study model against them; a
    sentence where there is nothing to show, instead of a table of headers (the quick profile measures no weights)."""
    if study.empty:
        return [
            "## The study's published weights",
            "",
            "Not measured in this experiment (`study.models` is empty), so no run is compared with them.",
            "",
        ]
    against = (
        f"{markdown_varying(check, index=False)}\n\nratio: the run's test MSE over the published weights'; "
        f"at_most_{band:.0%}_above: ratio ≤ {1 + band:.2f}. Dead latent units are ReLU units that output 0 for "
        "every test image, the study's confounder."
        if not check.empty
        else "No variant of the matrix is a study model whose published weights were measured."
    )
    return [
        "## The study's published weights, measured here (stage study: same code, same test images)",
        "",
        markdown_varying(study.reindex(columns=[*RUN_COLUMNS, "psnr_pooled", "classifier_accuracy"]), index=False),
        "",
        "The study's seed is unknown (-1). Its train and val losses are its own log, in the study's table below.",
        "",
        "## Each run of a study model against its published weights",
        "",
        against,
        "",
    ]


def pairwise_markdown(tests: pd.DataFrame) -> str:
    if tests.empty:
        return "One variant: no pair to compare."
    if tests.p.isna().all():
        return "No pair can be tested: each variant needs two or more seeds with a spread (`seeds:` in params.yaml)."
    tested = tests.p.notna()
    interval = pd.Series([f"[{low:+.6f}, {high:+.6f}]" for low, high in zip(tests.ci_low, tests.ci_high)], tests.index)
    shown = pd.DataFrame(
        {
            "a": tests.a,
            "b": tests.b,
            "mean_a": tests.mean_a.map("{:.6f}".format),  # fixed point: "0.0042372" beside "-1.2993e-05" misleads
            "mean_b": tests.mean_b.map("{:.6f}".format),
            "difference": tests.difference.map("{:+.6f}".format),
            "a_vs_b": (tests.mean_a / tests.mean_b - 1).map("{:+.1%}".format),
            "difference_95%_ci": interval.where(tested),
            "p": tests.p.map("{:.4g}".format).where(tested),
            "p_adjusted": tests.p_adjusted.map("{:.4g}".format).where(tested),
            "significant": tests.significant.where(tested),  # untested: –
        }
    )
    table = markdown_table(shown, index=False, disable_numparse=True)  # the strings as formatted above
    return (
        f"{table}\n\na_vs_b: (mean_a − mean_b) / mean_b, relative to b (a at +25% is b 20% below a). "
        "difference_95%_ci: Welch's 95% interval of the difference, the pair's own (not adjusted for the other "
        "pairs). Every pair of variants is in the adjustment, not only those of one decoder family."
    )


def data_line(manifest: dict, pinned: dict[str, str]) -> str:
    """Which data the runs measured (the prepared manifest), and whether it is the official EMNIST-Balanced: each
    input file's SHA-256 among `pinned`, the official files' (a stand-in's numbers are not the study's)."""
    official = set(manifest["inputs"].values()) <= set(pinned.values())
    what = (
        "the official EMNIST-Balanced files (their pinned SHA-256s)"
        if official
        else "not the official EMNIST-Balanced files (other SHA-256s than the pinned): a stand-in for the study's data"
    )
    counts = manifest["counts"]
    sizes = f"{counts['train']} train, {counts['val']} val, {counts['test']} test images"
    return f"Data: {manifest['source']}, {what}; {sizes}."
