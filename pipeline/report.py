"""DVC stage `report`: compare every evaluated variant in reports/report.md and reports/figures/*.png.

Also logs the report to MLflow as a `report` run and makes it the parent of the variant runs it compares,
so the MLflow UI groups one pipeline's runs together.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from pipeline import data, tracking  # noqa: E402
from pipeline.config import REPO_ROOT, run_stage  # noqa: E402
from pipeline.prepare import PREPARED_DIR  # noqa: E402

REPORTS_DIR = REPO_ROOT / "reports"
REFERENCE = Path(__file__).with_name("reference.yaml")
STUDY_COLUMNS = ["train_loss", "val_loss", "mse", "ssim", "psnr", "psnr_pooled"]
LATENT_COLUMNS = ["dead_latent_units", "active_latent_units_per_image", "effective_latent_dims"]
COMPRESSION_COLUMNS = ["latent_dim", "bytes_per_image_float32", "compression_ratio_float32",
                       "bytes_per_image_uint8", "psnr_pooled_uint8"]


def load_results(reports: Path, variants: list[str]) -> pd.DataFrame:
    """The metrics of the variants in params.yaml (stale files of removed variants are ignored)."""
    rows = []
    for variant in variants:
        path = reports / "metrics" / f"{variant}.json"
        if not path.exists():
            raise data.DataError(f"{path}: missing; run the evaluate stage first (dvc repro evaluate@{variant})")
        metrics = json.loads(path.read_text())
        rows.append({**metrics, **metrics.pop("run")})
    return pd.DataFrame(rows).set_index("variant")


def study_table(results: pd.DataFrame, reference: dict) -> pd.DataFrame:
    """Ours (full test set) beside the study's reported numbers and its published weights, per variant."""
    rows = []
    for variant, ours in results.iterrows():
        rows.append({"variant": variant, "source": f"CompressNet ({int(ours.epochs)} ep, {int(ours.n_test)} img)",
                     **{c: ours[c] for c in STUDY_COLUMNS}})
        if variant in reference["reported"]:
            rows.append({"variant": variant, "source": "study, reported (10 img)", **reference["reported"][variant]})
            rows.append({"variant": variant, "source": "study weights, full test",
                         **reference["published_weights"][variant]})
    return pd.DataFrame(rows).set_index(["variant", "source"])


def ranking(results: pd.DataFrame) -> list[str]:
    """Variants from best to worst by pooled test MSE, with the gap to the best."""
    ordered = results.sort_values("mse")
    best = ordered.iloc[0]
    lines = []
    for place, (variant, row) in enumerate(ordered.iterrows(), 1):
        gap = "" if place == 1 else f", {row.psnr_pooled - best.psnr_pooled:+.2f} dB pooled PSNR vs {ordered.index[0]}"
        lines.append(f"{place}. **{variant}**: MSE {row.mse:.5f}, PSNR {row.psnr:.2f} dB, SSIM {row.ssim:.4f}{gap}")
    return lines


def render_markdown(results: pd.DataFrame, reference: dict, figures: list[str]) -> str:
    compression = results[COMPRESSION_COLUMNS + ["max_abs_diff_decoder", "eval_seconds"]]
    decoder = results[["mse_decoder", "psnr_decoder", "ssim_decoder", "max_abs_diff_decoder"]]
    protocol = pd.DataFrame({v: r for v, r in results.seed_protocol.items()}).T[["mse", "psnr", "psnr_pooled", "ssim"]]
    parts = [
        "# CompressNet report", "",
        f"Test split: {int(results.n_test.iloc[0])} images; SSIM window: {results.ssim_window.iloc[0]}. "
        "PSNR is the study's per-image mean (data range = image max - min); pooled PSNR is 10·log10(1/MSE).", "",
        "## Ranking (pooled test MSE)", "", *ranking(results), "",
        "## The study's six quantities, ours beside theirs", "", _markdown(study_table(results, reference).reset_index(), index=False),
        "", f"The study trained {reference['epochs']} epochs and measured 10 random unseeded test images.", "",
        "## Encoder → decoder run separately", "", _markdown(decoder), "",
        "## The study's protocol (10 seeded test images)", "", _markdown(protocol), "",
        "## Latent units", "",
        "A unit is dead when it outputs 0 for every test image; effective dims hold 99% of the latent variance.", "",
        _markdown(results[LATENT_COLUMNS]), "",
        "## Compression", "", _markdown(compression), "",
        "uint8: per-dimension scale/offset calibrated on the val split (side information per model, not per image).",
        "", "## Figures", "", *[f"![{Path(f).stem}](figures/{Path(f).name})" for f in figures], "",
    ]
    return "\n".join(parts)


def _markdown(table: pd.DataFrame, index: bool = True) -> str:
    blanked = table.astype(object).where(table.notna(), None)  # tabulate shows None as missingval
    return blanked.to_markdown(index=index, floatfmt=".5g", missingval="–")


def plot_study_comparison(results: pd.DataFrame, out: Path) -> None:
    """The study's 2x2 figure: losses, MSE, SSIM, PSNR; autoencoder vs encoder->decoder."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    results[["train_loss", "val_loss"]].plot.bar(ax=axes[0, 0], title="final-epoch loss (MSE)", rot=0)
    for ax, metric in zip(axes.flat[1:], ("mse", "ssim", "psnr")):
        pair = results[[metric, f"{metric}_decoder"]].set_axis(["autoencoder", "encoder→decoder"], axis=1)
        pair.plot.bar(ax=ax, title=f"test {metric.upper()}", rot=0)
        low, high = pair.values.min(), pair.values.max()
        ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_loss_curves(variants: list[str], reports: Path, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for variant in variants:
        history = pd.read_csv(reports / "history" / f"{variant}.csv")
        for ax, column in zip(axes, ("train_loss", "val_loss")):
            ax.plot(history.epoch, history[column], "o-", label=variant)
    for ax, title in zip(axes, ("train loss", "val loss")):
        ax.set(title=title, xlabel="epoch", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_reconstructions(variants: list[str], results: pd.DataFrame, reports: Path, prepared: Path, out: Path) -> None:
    """Originals (top row) and each variant's reconstructions of the same upright test images."""
    test_images, _ = data.load_split(prepared, "test")
    indices = results.sample_indices.iloc[0]
    rows = [("original", test_images[indices])] + [(v, np.load(reports / "samples" / f"{v}.npy")) for v in variants]
    fig, axes = plt.subplots(len(rows), len(indices), figsize=(len(indices) * 0.8, len(rows) * 0.9))
    for r, (name, images) in enumerate(rows):
        for c, image in enumerate(images):
            axes[r, c].imshow(image, cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_per_class(results: pd.DataFrame, out: Path, worst: int = 8) -> None:
    """Per-character PSNR for every variant; the characters hardest for the best variant are marked."""
    table = pd.DataFrame({v: pd.DataFrame(r).set_index("char").psnr for v, r in results.per_class.items()})
    best = results.mse.idxmin()
    table = table.sort_values(best)
    fig, ax = plt.subplots(figsize=(13, 4.5))
    table.plot.bar(ax=ax, width=0.8, rot=0)
    for i in range(min(worst, len(table))):
        ax.axvspan(i - 0.5, i + 0.5, color="red", alpha=0.08)
    ax.set(title=f"test PSNR per character (sorted by {best}; shaded: its {worst} hardest)",
           ylabel="PSNR (dB)", xlabel="character")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_report(variants: list[str], reports: Path = REPORTS_DIR,
                 prepared: Path = PREPARED_DIR) -> tuple[Path, list[Path], pd.DataFrame]:
    results = load_results(reports, variants)
    reference = yaml.safe_load(REFERENCE.read_text())
    figures_dir = reports / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = [figures_dir / name for name in
               ("study_comparison.png", "loss_curves.png", "reconstructions.png", "per_class_psnr.png")]
    plot_study_comparison(results, figures[0])
    plot_loss_curves(variants, reports, figures[1])
    plot_reconstructions(variants, results, reports, prepared, figures[2])
    plot_per_class(results, figures[3])
    report = reports / "report.md"
    data.atomic_write(report, lambda tmp: tmp.write_text(render_markdown(results, reference, [f.name for f in figures])))
    return report, figures, results


def log_report(experiment: str, report: Path, figures: list[Path], run_ids: list[str]) -> None:
    """One `report` run holding the report; the variant runs become its children in the MLflow UI."""
    tracking.setup(experiment)
    with tracking.tracked_run(run_name="report", tags=tracking.run_tags("report")) as run:
        mlflow.log_artifact(str(report))
        for figure in figures:
            mlflow.log_artifact(str(figure), "figures")
    client = mlflow.MlflowClient()
    for run_id in run_ids:
        try:
            client.set_tag(run_id, "mlflow.parentRunId", run.info.run_id)
        except mlflow.exceptions.MlflowException:
            print(f"report: run {run_id} not found in the tracking store; not grouped")


def _report(params) -> str:
    report, figures, results = write_report(list(params.variants))
    log_report(params.mlflow.experiment, report, figures, [r for r in results.mlflow_run_id if isinstance(r, str)])
    return f"wrote {report} and {len(figures)} figures"


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", __doc__, _report, argv, per_variant=False,
                     expected=(data.DataError, tracking.TrackingError))


if __name__ == "__main__":
    sys.exit(main())
