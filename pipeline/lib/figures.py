"""The report's figures. Each takes the per-run results table (one row per variant and seed) and a path.

Read at a glance: bars start at zero, the seeds behind a mean are dots on its bar, and no axis has an offset or a
scientific multiplier (a one-variant report once showed "1e-10 + 2.940203e-3").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from pipeline.lib import figures_rd, figures_study, plotting
from pipeline.lib.plotting import plt  # plotting sets the backend before pyplot loads
from pipeline.lib.report_findings import counted
from pipeline.lib.report_tables import PUBLISHED_WEIGHTS_BAND

REPORT_FIGURES = {  # each figure's caption in the report: what to read in it
    "findings_seed_spread": "Each variant's mean and 95% interval beside its seeds' dots, for pooled PSNR, SSIM and "
    "dead latent units (which differences are significant: the pairwise table).",
    "study_comparison": "Ours beside the study: final-epoch losses against its Keras log, and the test metrics (the "
    "encoder → decoder pass's bar beside the autoencoder's unless they agree to the bit) against its published "
    "weights (red), each seed a dot.",
    "against_published": "Each seed's test MSE over its study model's published weights' (1: as good; dashed: "
    f"{PUBLISHED_WEIGHTS_BAND:.0%} worse), the published weights' dead latent units below the line, each variant "
    "upsampling at that layer beside it.",
    "dead_units": "Each run's test MSE against its dead latent units, the published weights as red stars: the study's "
    "confounder.",
    "loss_curves": "Train and val pixel MSE per epoch, mean over seeds with the seeds' range shaded, beside the "
    "study's Keras log (dashed).",
    "reconstructions": "The same test images (top row) as each run reconstructs them.",
    "per_class_psnr": "Per-image PSNR per character, mean over seeds, sorted by the lowest-MSE variant; below, each "
    "variant's difference from it.",
    "rate_distortion": "Bytes per image against pooled PSNR and SSIM: each variant's storage forms beside the "
    "classical codecs, the moonshot in red; below, a close-up of the variants' compact forms.",
}


def report_figures(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    means: pd.DataFrame,
    rd: pd.DataFrame,
    histories: dict[str, list[pd.DataFrame]],
    originals: np.ndarray,
    samples: dict[str, np.ndarray],
    published: pd.DataFrame,
    keras_log: dict[str, dict[str, dict[int, float]]],
    out: Path,
    specs: dict[str, dict] | None = None,
) -> list[Path]:
    """Every figure of the report into `out`; histories per variant, samples (reconstructions) per run, published:
    the study's published weights as the study stage measured them (a row per model, with its `variant`);
    keras_log: the study's own losses per model, {"train_loss": {epoch: loss}, "val_loss": ...}; specs: each
    variant's spec, which names a decoder family's variants by their upsampling layer ("model01 (layer 3)") on the
    at-a-glance figures and pairs their colours (`plotting.variant_colours`)."""
    specs = specs or {}
    paths = {name: out / f"{name}.png" for name in REPORT_FIGURES}
    variants = list(dict.fromkeys(results.variant))
    labels = plotting.layer_labels(variants, specs)
    colours, markers = plotting.variant_colours(variants, specs), plotting.variant_markers(variants, specs)
    by_variant = published.set_index("variant")
    runs_labelled, colours_labelled = named(results, labels), relabelled(colours, labels)
    seed_spread(runs_labelled, summary.rename(index=labels), paths["findings_seed_spread"], colours_labelled)
    figures_rd.rate_distortion(rd, paths["rate_distortion"], colours)
    figures_study.study_comparison(runs_labelled, by_variant.rename(index=labels), paths["study_comparison"])
    band = PUBLISHED_WEIGHTS_BAND
    figures_study.against_published(results, by_variant, specs, band, paths["against_published"], colours)
    markers_labelled = relabelled(markers, labels)
    figures_study.dead_units(runs_labelled, by_variant, paths["dead_units"], colours_labelled, markers_labelled)
    loss_curves(
        relabelled(histories, labels),
        relabelled(keras_log, labels),
        paths["loss_curves"],
        colours_labelled,
        markers_labelled,
    )
    reconstructions(originals, samples, paths["reconstructions"])
    per_class_psnr(per_class_means(results), means.mse.idxmin(), paths["per_class_psnr"], colours)
    return list(paths.values())


def named(frame: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The frame with each variant under its label (`plotting.layer_labels`), a variant without one under its name."""
    return frame.assign(variant=frame.variant.map(lambda v: labels.get(v, v)))


def relabelled(by_variant: dict, labels: dict[str, str]) -> dict:
    return {labels.get(variant, variant): value for variant, value in by_variant.items()}


def per_class_means(results: pd.DataFrame) -> pd.DataFrame:
    """Per-character test PSNR (rows: characters) of each variant (columns), the mean over its seeds."""
    per_class = pd.DataFrame({name: pd.DataFrame(r).set_index("char").psnr for name, r in results.per_class.items()})
    return per_class.T.groupby(results.variant, sort=False).mean().T


SEED_SIDE = 0.14  # seed_spread: the interval this far left of a variant's tick, its seeds' dots as far right


def seed_spread(runs: pd.DataFrame, summary: pd.DataFrame, out: Path, colours: dict) -> None:
    """Every seed as a dot beside its variant's mean and 95% interval, for pooled PSNR, SSIM and dead units; the
    dots in their variant's colour (`colours`, by the name on the axis)."""
    panels = [
        ("psnr_pooled", "test pooled PSNR (dB)\n= 10·log10(1 / MSE)"),  # the tested MSE, in dB
        ("ssim", "test SSIM"),
        ("dead_latent_units", "dead latent units"),
    ]
    variants = list(summary.index)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.9 * len(variants)), 3 * len(panels)), sharex=True)
    for ax, (column, title) in zip(axes, panels):
        positions = np.arange(len(variants))
        mean = summary[f"{column}_mean"].to_numpy()
        below = (summary[f"{column}_mean"] - summary[f"{column}_ci_low"]).fillna(0).to_numpy()
        above = (summary[f"{column}_ci_high"] - summary[f"{column}_mean"]).fillna(0).to_numpy()
        ax.errorbar(
            positions - SEED_SIDE,
            mean,
            yerr=[below, above],
            fmt="_",
            markersize=18,
            capsize=6,
            color="black",
            label="mean, 95% CI" if summary.n.max() > 1 else "mean",
        )
        for i, variant in enumerate(variants):
            values = runs.loc[runs.variant == variant, column]
            spread = plotting.spread(len(values), 0.06)
            colour = colours[variant]
            ax.scatter(i + SEED_SIDE + spread, values, s=18, color=colour)
        ax.set(ylabel=title)
        ax.grid(axis="y", alpha=0.3)
        plotting.min_span(ax)
    seed = Line2D([], [], marker="o", ls="", color="grey")  # a legend entry only: no artist among the dots
    handles, names = axes[0].get_legend_handles_labels()
    axes[0].legend([*handles, seed], [*names, "each seed (in its variant's colour)"], loc="best")
    axes[-1].set_xticks(np.arange(len(variants)), variants, rotation=30, ha="right")
    axes[-1].set_xlim(-0.5, len(variants) - 0.5)  # one variant's dots stay beside its mean, not at the edges
    fig.suptitle(f"seed-to-seed spread ({counted(int(summary.n.max()), 'seed')} per variant)")
    fig.tight_layout()
    plotting.save(fig, out)


def loss_curves(
    histories: dict[str, list[pd.DataFrame]], keras_log: dict, out: Path, colours: dict, markers: dict
) -> None:
    """Per variant: the mean over seeds of each epoch's loss, shaded between the seeds' min and max; beside a study
    model, the study's own Keras log as crosses on a dashed line of the same colour."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for variant, frames in histories.items():
        color = colours[variant]
        stacked = pd.concat(frames).groupby("epoch")
        for ax, column in zip(axes, ("train_loss", "val_loss")):
            mean = stacked[column].mean()
            ax.plot(mean.index, mean, "-", marker=markers[variant], color=color, label=variant)
            ax.fill_between(mean.index, stacked[column].min(), stacked[column].max(), color=color, alpha=0.2)
            if variant in keras_log:
                logged = pd.Series(keras_log[variant][column]).sort_index()
                ax.plot(logged.index, logged, "x--", color=color)
    for ax, title in zip(axes, ("train loss", "val loss")):
        ax.set(title=f"{title} (mean over seeds, min–max shaded)", xlabel="epoch", yscale="log")
    axes[0].set_ylabel("pixel MSE (log scale)")  # whatever the objective: train_loss and val_loss are MSE
    if histories.keys() & keras_log.keys():
        axes[0].plot(
            [], [], "x--", color="grey", label="the study's Keras log,\nsame colour (its val set\nis its test set)"
        )
    fig.tight_layout()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    plotting.save(fig, out, bbox_inches="tight")


def reconstructions(originals: np.ndarray, rows: dict[str, np.ndarray], out: Path) -> None:
    """Originals (top row) and each run's reconstructions of the same upright test images."""
    rows = {"original": originals, **rows}
    fig, axes = plt.subplots(len(rows), len(originals), figsize=(len(originals) * 0.8, len(rows) * 0.9), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            axes[r, c].imshow(image, cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    plotting.save(fig, out, bbox_inches="tight")


def per_class_psnr(table: pd.DataFrame, best: str, out: Path, colours: dict, worst: int = 8) -> None:
    """Per-character PSNR (rows: characters, columns: variants); the best variant's hardest are shaded. Below, each
    variant's difference from the best variant as a dot under its bar: a 1 dB gap is invisible on bars from zero."""
    table = table.sort_values(best)
    fig, (ax, below) = plt.subplots(2, 1, figsize=(13, 7.5), sharex=True, height_ratios=(3, 2))
    table.plot.bar(ax=ax, width=0.8, rot=0, legend=False, color=[colours[v] for v in table.columns])
    ax.set_ylim(bottom=0)
    for i in range(min(worst, len(table))):
        ax.axvspan(i - 0.5, i + 0.5, color="red", alpha=0.08)
    ax.set(title=f"test PSNR per character, mean over seeds (sorted by {best}; shaded: its {worst} hardest)")
    ax.set(ylabel="per-image PSNR (dB)")
    offsets = (np.arange(len(table.columns)) - (len(table.columns) - 1) / 2) * 0.8 / len(table.columns)
    for offset, variant in zip(offsets, table.columns):
        below.scatter(np.arange(len(table)) + offset, table[variant] - table[best], s=10, color=colours[variant])
    below.axhline(0, color="black", lw=0.8)
    below.set(ylabel=f"per-image PSNR − {best}'s (dB)", xlabel="character")
    below.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    columns = -(-len(table.columns) // 12)  # beside the axes (the sorted bars' right end reaches the top), 12 a column
    fig.legend(
        *ax.get_legend_handles_labels(), title="variant", loc="center left", bbox_to_anchor=(1.0, 0.5), ncols=columns
    )
    plotting.save(fig, out, bbox_inches="tight")
