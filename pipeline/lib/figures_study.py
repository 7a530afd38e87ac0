"""The report's figures beside the study: its 2x2 comparison, and each run's test MSE over the published weights'.

Read at a glance as the other figures (pipeline.lib.figures): from zero, each seed a dot, no offset axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from pipeline.lib import plotting, stats
from pipeline.lib.plotting import plt  # plotting sets the backend before pyplot loads

SAME_TO_THE_BIT = "autoencoder = encoder→decoder (to the bit)"
BAR_COLOURS = {
    "train_loss": "C2",
    "val_loss": "C4",
    "autoencoder": "C0",
    "encoder→decoder": "C1",
    SAME_TO_THE_BIT: "C0",
}


def study_comparison(runs: pd.DataFrame, published: pd.DataFrame, out: Path) -> None:
    """The study's 2x2 figure (means over seeds, each seed a dot): losses, MSE, SSIM, PSNR; autoencoder vs
    encoder->decoder (one bar where every run's two passes agree to the bit); the study's published weights (indexed
    by variant) as a line across their model's bars, and its Keras log's final losses in the loss panel. One legend
    below the panels: none covers a bar."""
    n_variants = runs.variant.nunique()
    fig, axes = plt.subplots(2, 2, figsize=(max(10, 0.8 * n_variants), 7))
    keras_log = "the study's Keras log (its val set is its test set)"
    losses = {"train_loss": "train_loss", "val_loss": "val_loss"}
    _seed_bars(axes[0, 0], runs, losses, published, keras_log, line_style="--")  # not the published weights' line
    axes[0, 0].set_title("final-epoch loss (MSE)")
    same = _same_to_the_bit(runs, published)
    for ax, metric in zip(axes.flat[1:], ("mse", "ssim", "psnr")):
        columns = {metric: SAME_TO_THE_BIT} if same else {metric: "autoencoder", f"{metric}_decoder": "encoder→decoder"}
        _seed_bars(ax, runs, columns, published, "published weights")
        ax.set_title(f"test {'per-image mean ' if metric == 'psnr' else ''}{metric.upper()}")
    fig.tight_layout()
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=3)
    plotting.save(fig, out, bbox_inches="tight")


def _same_to_the_bit(runs: pd.DataFrame, published: pd.DataFrame) -> bool:
    """Whether every run's and every published model's encoder→decoder pass reconstructs each test image exactly as
    its autoencoder (max_abs_diff_decoder 0; a run without the field: not known to)."""
    unknown = pd.Series([np.nan])
    differences = pd.concat(
        [runs.get("max_abs_diff_decoder", unknown), published.get("max_abs_diff_decoder", unknown[:0])]
    )
    return bool((differences == 0).all())


def _seed_bars(
    ax, runs: pd.DataFrame, columns: dict[str, str], published: pd.DataFrame, published_label: str, line_style="-"
) -> None:
    """Per variant a bar per column (labelled) at its mean over seeds, from zero, and each seed's value as a dot on
    its bar, spread evenly across it; a published value of the variant (`published`: by variant) as a line across."""
    variants = list(dict.fromkeys(runs.variant))
    by_variant = runs.groupby("variant", sort=False)
    width = 0.8 / len(columns)
    seeds = runs.variant.map(runs.variant.value_counts())
    spread = ((by_variant.cumcount() + 0.5) / seeds - 0.5) * 0.6 * width  # within the middle 60% of the bar
    for j, (column, label) in enumerate(columns.items()):
        centres = np.arange(len(variants)) - 0.4 + width * (j + 0.5)
        ax.bar(centres, by_variant[column].mean().reindex(variants), width, label=label, color=BAR_COLOURS[label])
        centre_of = dict(zip(variants, centres))
        x = runs.variant.map(centre_of) + spread
        ax.scatter(x, runs[column], s=12, color="black", alpha=0.7, zorder=3, label=None if j else "each seed")
        values = published.get(column, pd.Series(dtype=float)).dropna()
        _published_lines(ax, centre_of, values, width, None if j else published_label, line_style)
    ax.set_xticks(np.arange(len(variants)), variants, rotation=30, ha="right")
    ax.set_ylim(bottom=0)


def _published_lines(
    ax, centres: dict[str, float], values: pd.Series, width: float, label: str | None, line_style: str
) -> None:
    """A red line across the bar of each variant that has a published value; `label` on the first only."""
    for variant in [v for v in values.index if v in centres]:
        x = centres[variant]
        ends, value = [x - width / 2, x + width / 2], [values[variant]] * 2
        ax.plot(ends, value, color="red", ls=line_style, lw=2, zorder=4, label=label)
        label = None


def dead_units(runs: pd.DataFrame, published: pd.DataFrame, out: Path, colours: dict, markers: dict) -> None:
    """The study's confounder at a glance: each run's test MSE against its dead latent units, in its variant's colour,
    in its group's marker, with each study model's published weights as a red star named by its model (published: by
    variant)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    variants = list(dict.fromkeys(runs.variant))
    for offset, variant in zip(plotting.spread(len(variants), 0.2), variants):  # whole counts: side by side
        group = runs[runs.variant == variant]
        x, colour = group.dead_latent_units + offset, colours[variant]
        ax.scatter(x, group.mse, s=30, marker=markers[variant], color=colour, label=variant)
    theirs = published.reindex(columns=["dead_latent_units", "mse"]).dropna()
    ax.scatter(theirs.dead_latent_units, theirs.mse, marker="*", s=120, color="red", label="published weights")
    for dead, models in theirs.groupby("dead_latent_units"):  # one label for models with the same count
        where = (dead, models.mse.max())
        ax.annotate(", ".join(models.index), where, xytext=(6, 4), textcoords="offset points", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="dead latent units (output 0 for every test image)", ylabel="test MSE")
    ax.set_xlim(left=-0.5)
    ax.set_ylim(bottom=0)
    ax.set_title("test MSE against dead latent units, each run a dot (variants side by side at each count)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.legend(*ax.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    plotting.save(fig, out, bbox_inches="tight")


def against_published(
    runs: pd.DataFrame, published: pd.DataFrame, specs: dict[str, dict], band: float, out: Path, colours: dict
) -> None:
    """Per study model with a published test MSE (a tick, named by its upsampling layer): each seed's test MSE over
    it (1: as good; above 1 + band: more than `band` worse), its seeds' range printed above them, and beside them the
    same ratio for each other group's variant that upsamples at the model's layer (model01_linear over model01's
    weights). A marker per group (`plotting.paired_groups`), each variant in its colour (`colours`), the published
    weights' dead units on the line at 1. published: the study stage's table by variant."""
    mse = published.get("mse", pd.Series(dtype=float)).reindex(published.index)
    models = [m for m in published.index if m in set(runs.variant) and mse[m] > 0]  # NaN or 0: nothing to divide by
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models)), 4.5))
    if not models:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no study model of this matrix has published weights measured", ha="center")
        plotting.save(fig, out)
        return
    groups = plotting.paired_groups(list(dict.fromkeys(runs.variant)), specs)
    for tick, model in enumerate(models):
        _ratios_at(ax, tick, runs, model, mse[model], _same_layer(model, groups, specs), colours)
        _published_dead_label(ax, tick, published.get("dead_latent_units", pd.Series(dtype=float)).get(model))
    ax.axhline(1, color="red", lw=1.5, label="the published weights (their dead latent units below the line)")
    ax.axhline(1 + band, color="red", lw=1, ls="--", label=f"{band:.0%} above them")
    for index, group in enumerate(groups):
        name = next((label for label, members in stats.families(specs).items() if members == group), group[0])
        ax.scatter([], [], marker=plotting.GROUP_MARKERS[index], color="grey", label=name)
    labels = plotting.layer_labels(list(dict.fromkeys(runs.variant)), specs)
    ax.set_xticks(np.arange(len(models)), [labels.get(m, m) for m in models], rotation=30, ha="right")
    ax.set_xlim(-0.5, len(models) - 0.5)
    ax.set_ylim(0, max(ax.get_ylim()[1], (1 + band) * 1.12))  # room above the band's line for the ranges
    ax.set(ylabel="test MSE / the study model's published weights'", title="each seed against the published weights")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.legend(*ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=2, fontsize=8)
    plotting.save(fig, out, bbox_inches="tight")


def _ratios_at(ax, tick: int, runs: pd.DataFrame, model: str, published: float, beside: list, colours: dict) -> None:
    """Each (group index, variant) of `beside` in its slot around the tick, its seeds' test MSE over `published`;
    the model's own range of ratios above its dots."""
    width = 0.8 / len(beside)
    for slot, (group, variant) in enumerate(beside):
        ratios = runs.loc[runs.variant == variant, "mse"] / published
        x = tick + (slot - (len(beside) - 1) / 2) * width + plotting.spread(len(ratios), 0.04)
        marker = plotting.GROUP_MARKERS[group]
        ax.scatter(x, ratios, s=30, marker=marker, color=colours[variant], edgecolors="black", lw=0.4)
        if variant == model and len(ratios):
            low, high = ratios.min(), ratios.max()
            text = f"{low:.3f}×" if low == high else f"{low:.3f}–{high:.3f}×"
            ax.annotate(text, (x.mean(), high), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=7)


def _published_dead_label(ax, tick: int, count: float | None) -> None:
    if count is not None and pd.notna(count):
        ax.annotate(
            f"{int(count)} dead",
            (tick, 1),
            xytext=(0, -10),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color="red",
        )


def _same_layer(model: str, groups: list[list[str]], specs: dict[str, dict]) -> list[tuple[int, str]]:
    """(group index, variant) of each group's variant that upsamples at the model's layer, the model's among them;
    the model alone (index 0) when it is in no group."""
    if not any(model in group for group in groups):
        return [(0, model)]
    layer = stats.upsampling_position(specs[model])
    return [
        (index, variant)
        for index, group in enumerate(groups)
        for variant in group
        if stats.upsampling_position(specs[variant]) == layer
    ]
