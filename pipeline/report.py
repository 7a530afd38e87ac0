"""DVC stage `report`: compare every evaluated run in reports/report.md and reports/figures/*.png.

Runs are (variant, seed) pairs. The report opens with findings generated from the numbers: the best
variant by mean test MSE over seeds, and which differences exceed the seed-to-seed spread (Welch's t-test,
Benjamini-Hochberg adjusted). It also logs to MLflow as a `report` run and becomes the parent of the runs
it compares, so the MLflow UI groups one pipeline's runs together.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import yaml

from pipeline import data, dvclock, figures, rate_distortion, stats, tracking
from pipeline.cli import run_stage
from pipeline.config import REPO_ROOT, Params, run_name
from pipeline.prepare import PREPARED_DIR

REPORTS_DIR = REPO_ROOT / "reports"
REFERENCE = Path(__file__).with_name("reference.yaml")
STUDY_COLUMNS = ["train_loss", "val_loss", "mse", "ssim", "psnr", "psnr_pooled"]
SEED_COLUMNS = ["mse", "psnr", "psnr_pooled", "ssim", "dead_latent_units", "effective_latent_dims", "val_loss"]
RUN_COLUMNS = ["variant", "seed", "epochs", "mse", "psnr", "ssim", "dead_latent_units",
               "active_latent_units_per_image", "effective_latent_dims"]
COMPRESSION_COLUMNS = ["latent_dim", "bytes_per_image_float32", "bytes_per_image_uint8", "bytes_per_image_uint8_range",
                       "psnr_pooled_uint8", "bytes_per_image_entropy", "prior_bits_per_image", "max_abs_diff_decoder",
                       "eval_seconds", "refine_steps", "refine_seconds", "psnr_refined", "ssim_refined",
                       "psnr_pooled_refined"]
FIDELITY_COLUMNS = ["classifier_accuracy", "classifier_accuracy_originals", "psnr", "ssim"]


def load_results(reports: Path, runs: list[tuple[str, int]]) -> pd.DataFrame:
    """One row per (variant, seed) in params.yaml, indexed by run name (stale files of removed runs are ignored)."""
    rows = []
    for variant, seed in runs:
        path = reports / "metrics" / f"{run_name(variant, seed)}.json"
        if not path.exists():
            raise data.DataError(f"{path}: missing; run the evaluate stage first (dvc repro {dvclock.stage_name('evaluate', variant, seed)})")
        metrics = json.loads(path.read_text())
        rows.append({**metrics, **metrics.pop("run"), "run": run_name(variant, seed)})
    return pd.DataFrame(rows).set_index("run")


def variant_means(results: pd.DataFrame) -> pd.DataFrame:
    numeric = results.select_dtypes("number").drop(columns="seed")
    return numeric.groupby(results.variant, sort=False).mean()


def study_table(means: pd.DataFrame, n_seeds: int, reference: dict) -> pd.DataFrame:
    """Ours (full test set, mean over seeds) beside the study's reported numbers and its published weights."""
    rows = []
    for variant, ours in means.iterrows():
        rows.append({"variant": variant, "source": f"CompressNet ({int(ours.epochs)} ep, {n_seeds} seeds, "
                                                   f"{int(ours.n_test)} img)", **{c: ours[c] for c in STUDY_COLUMNS}})
        if variant in reference["reported"]:
            rows.append({"variant": variant, "source": "study, reported (10 img)", **reference["reported"][variant]})
            rows.append({"variant": variant, "source": "study weights, full test",
                         **reference["published_weights"][variant]})
    return pd.DataFrame(rows).set_index(["variant", "source"])


def findings(summary: pd.DataFrame, tests: pd.DataFrame, specs: dict[str, dict], reference: dict) -> list[str]:
    """Sentences generated from the numbers only: the best variant, significance, and the study's question."""
    best = summary.mse_mean.idxmin()
    n = int(summary.n.min())
    lines = [f"- Best variant by mean test MSE over {n} seed(s): **{best}** "
             f"(MSE {_pm(summary.loc[best], 'mse', '.5f')}, pooled PSNR {_pm(summary.loc[best], 'psnr_pooled', '.2f')} dB, "
             f"SSIM {_pm(summary.loc[best], 'ssim', '.4f')})."]
    if n < 2:
        return lines + ["- With one seed per variant no difference can be told from seed-to-seed luck; "
                        "list more `seeds:` in params.yaml."]
    involving = tests[(tests.a == best) | (tests.b == best)]
    others = lambda frame: [b if a == best else a for a, b in zip(frame.a, frame.b)]  # noqa: E731
    worse, tied = others(involving[involving.significant]), others(involving[~involving.significant])
    lines.append(f"- Significantly worse than {best} (Welch's t-test on per-seed test MSE, Benjamini-Hochberg "
                 f"adjusted p < {stats.ALPHA}): {', '.join(worse) or 'none'}. "
                 f"Not distinguishable from {best} with {n} seeds: {', '.join(tied) or 'none'}.")
    for label, members in stats.families(specs).items():
        lines.append(_family_finding(label, members, summary, tests, specs, reference))
    dead = summary[summary.dead_latent_units_mean >= 1]
    if len(dead):
        lines.append("- Dead latent units (mean over seeds): " + ", ".join(
            f"{v} {r.dead_latent_units_mean:.1f}" for v, r in dead.iterrows()) + "; every other variant 0.")
    return lines


def _family_finding(label: str, members: list[str], summary: pd.DataFrame, tests: pd.DataFrame,
                    specs: dict[str, dict], reference: dict) -> str:
    ordered = summary.loc[members].sort_values("mse_mean").index
    positions = [stats.upsampling_position(specs[v]) for v in ordered]
    inside = tests[tests.a.isin(members) & tests.b.isin(members)]
    study = sorted(reference["upsampling_layer"], key=lambda m: reference["reported"][m]["mse"])
    study_positions = [reference["upsampling_layer"][m] for m in study]
    same_order = "the same order as" if positions == study_positions else "a different order from"
    hits = inside[inside.significant]
    pairs = f" ({', '.join(f'{a}–{b}' for a, b in zip(hits.a, hits.b))})" if len(hits) else ""
    verdict = ("the upsampling position makes a difference larger than the seed spread" if inside.significant.any()
               else "no difference between upsampling positions exceeds the seed spread")
    return (f"- Decoder family ({label}): by mean MSE "
            + " < ".join(f"{v} (layer {p})" for v, p in zip(ordered, positions))
            + f", {same_order} the study's (layer {' < '.join(map(str, study_positions))}); "
            + f"{len(hits)} of {len(inside)} pairs significant{pairs}, so {verdict}.")


def _pm(row: pd.Series, column: str, fmt: str) -> str:
    std = row[f"{column}_std"]
    return f"{row[f'{column}_mean']:{fmt}}" + ("" if np.isnan(std) else f" ± {std:{fmt}}")


def seed_table(summary: pd.DataFrame) -> pd.DataFrame:
    """mean ± std [95% interval] per variant, as text cells."""
    cells = {}
    for column in SEED_COLUMNS:
        fmt = ".5f" if column in ("mse", "val_loss") else ".2f" if column != "ssim" else ".4f"
        cells[column] = [_pm(row, column, fmt) + ("" if np.isnan(row[f"{column}_ci_low"]) else
                         f" [{row[f'{column}_ci_low']:{fmt}}, {row[f'{column}_ci_high']:{fmt}}]")
                         for _, row in summary.iterrows()]
    return pd.DataFrame({"n": summary.n, **cells}, index=summary.index)


def render_markdown(results: pd.DataFrame, summary: pd.DataFrame, tests: pd.DataFrame, specs: dict,
                    reference: dict, figure_names: list[str], rd: pd.DataFrame) -> str:
    means = variant_means(results)
    decoder = means[["mse_decoder", "psnr_decoder", "ssim_decoder", "max_abs_diff_decoder"]]
    protocol = pd.DataFrame(list(results.seed_protocol), index=results.index)[["mse", "psnr", "psnr_pooled", "ssim"]]
    n_seeds = int(summary.n.min())
    parts = [
        "# CompressNet report", "",
        "## Findings", "", *findings(summary, tests, specs, reference), rate_distortion.moonshot_finding(rd),
        *rate_distortion.quality_target_findings(means, reference["train_flops_per_image"]["model01"]), "",
        f"Test split: {int(results.n_test.iloc[0])} images; SSIM window: {results.ssim_window.iloc[0]}. "
        "PSNR is the study's per-image mean (data range = image max - min); pooled PSNR is 10·log10(1/MSE).", "",
        "## Mean ± std over seeds [95% t-interval of the mean]", "", _markdown(seed_table(summary)), "",
        "## Pairwise differences in test MSE (Welch's t-test, Benjamini-Hochberg adjusted)", "",
        _markdown(tests, index=False), "",
        "## Every run", "", _markdown(results[RUN_COLUMNS], index=False), "",
        "## The study's six quantities, ours beside theirs", "",
        _markdown(study_table(means, n_seeds, reference).reset_index(), index=False), "",
        f"The study trained {reference['epochs']} epochs, one run per model, and measured 10 random unseeded "
        "test images.", "",
        "## Encoder → decoder run separately (mean over seeds)", "", _markdown(decoder), "",
        "## The study's protocol (10 seeded test images), per run", "", _markdown(protocol), "",
        "## Compression (mean over seeds)", "", _markdown(means.reindex(columns=COMPRESSION_COLUMNS)), "",
        "Bytes per image are real streams (pipeline.codec) of the whole test split, headers and side information "
        "included. uint8: per-dimension scale/offset calibrated on the train split, carried in the stream; "
        "uint8_range: the same codes range-coded under a Gaussian per dimension (its mean and spread in the stream); "
        "entropy: integer latents range-coded under the variant's learned prior (prior_bits_per_image is the "
        "prior's own estimate). A unit is dead when it outputs 0 for every test image; effective dims hold 99% of "
        "the latent variance.", "",
        "## Rate–distortion: variants beside classical codecs (reports/rate_distortion.json)", "",
        _markdown(rd.sort_values(["kind", "method", "bytes_per_image"], ascending=[False, True, True]), index=False), "",
        "## Semantic fidelity: the classifier stage's test accuracy (mean over seeds)", "",
        _markdown(means.reindex(columns=FIDELITY_COLUMNS)), "",
        "", "## Figures", "", *[f"![{Path(f).stem}](figures/{f})" for f in figure_names], "",
    ]
    return "\n".join(parts)


def _markdown(table: pd.DataFrame, index: bool = True) -> str:
    blanked = table.astype(object).where(table.notna(), None)  # tabulate shows None as missingval
    return blanked.to_markdown(index=index, floatfmt=".5g", missingval="–")


def draw_figures(results: pd.DataFrame, summary: pd.DataFrame, rd: pd.DataFrame, reports: Path,
                 prepared: Path) -> list[Path]:
    out = reports / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.png" for name in
             ("findings_seed_spread", "study_comparison", "loss_curves", "reconstructions", "per_class_psnr",
              "rate_distortion")}
    means = variant_means(results)
    figures.seed_spread(results, summary, paths["findings_seed_spread"])
    figures.rate_distortion(rd, paths["rate_distortion"])
    figures.study_comparison(means, paths["study_comparison"])
    histories = {}
    for name, row in results.iterrows():
        histories.setdefault(row.variant, []).append(pd.read_csv(reports / "history" / f"{name}.csv"))
    figures.loss_curves(histories, paths["loss_curves"])
    first_seed = results.groupby("variant", sort=False).head(1)
    test_images, _ = data.load_split(prepared, "test")
    figures.reconstructions(test_images[results.sample_indices.iloc[0]],
                            {name: np.load(reports / "samples" / f"{name}.npy") for name in first_seed.index},
                            paths["reconstructions"])
    per_class = pd.DataFrame({name: pd.DataFrame(r).set_index("char").psnr for name, r in results.per_class.items()})
    figures.per_class_psnr(per_class.T.groupby(results.variant, sort=False).mean().T, means.mse.idxmin(),
                           paths["per_class_psnr"])
    return list(paths.values())


def write_report(params: Params, reports: Path = REPORTS_DIR,
                 prepared: Path = PREPARED_DIR) -> tuple[Path, list[Path], pd.DataFrame, pd.DataFrame]:
    results = load_results(reports, params.runs())
    summary = stats.aggregate(results, SEED_COLUMNS)
    tests = stats.pairwise_welch(results, "mse")
    specs = {name: dataclasses.asdict(spec) for name, spec in params.variants.items()}
    reference = yaml.safe_load(REFERENCE.read_text())
    rd = rate_distortion.assemble(variant_means(results), rate_distortion.load_baselines(reports / "baselines.json"))
    rate_distortion.write_json(rd, reports / "rate_distortion.json")
    paths = draw_figures(results, summary, rd, reports, prepared)
    report = reports / "report.md"
    text = render_markdown(results, summary, tests, specs, reference, [p.name for p in paths], rd)
    data.atomic_write(report, lambda tmp: tmp.write_text(text))
    return report, paths, results, summary


def log_report(experiment: str, report: Path, figure_paths: list[Path], summary: pd.DataFrame,
               run_ids: list[str]) -> None:
    """One `report` run holding the report and the per-variant means; the training runs become its children,
    tagged with the digest of their evaluate stage's dvc.lock entry."""
    tracking.setup(experiment)
    with tracking.tracked_run(run_name="report", tags=tracking.run_tags("report")) as run:
        mlflow.log_artifact(str(report))
        mlflow.log_artifact(str(report.with_name("rate_distortion.json")))
        for figure in figure_paths:
            mlflow.log_artifact(str(figure), "figures")
        mlflow.log_metrics({f"{variant}.{column}": float(value) for variant, row in summary.iterrows()
                            for column, value in row.items() if column.endswith(("_mean", "_std"))
                            and np.isfinite(value)})
    client = mlflow.MlflowClient()
    lock = dvclock.read_lock(dvclock.dvc_root())
    for run_id in run_ids:
        try:
            client.set_tag(run_id, "mlflow.parentRunId", run.info.run_id)
            tags = client.get_run(run_id).data.tags
            stage = dvclock.stage_name("evaluate", tags.get("variant"), tags.get("seed"))
            client.set_tag(run_id, "report.dvc.evaluate_lock_sha256", dvclock.entry_digest(lock, stage))
        except mlflow.exceptions.MlflowException:
            print(f"report: run {run_id} not found in the tracking store; not grouped")


def _report(params: Params) -> str:
    report, figure_paths, results, summary = write_report(params)
    log_report(params.mlflow.experiment, report, figure_paths, summary,
               [r for r in results.mlflow_run_id if isinstance(r, str)])
    return f"wrote {report} and {len(figure_paths)} figures ({len(results)} runs of {len(summary)} variants)"


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", __doc__, _report, argv, per_run=False,
                     expected=(data.DataError, tracking.TrackingError))


if __name__ == "__main__":
    sys.exit(main())
