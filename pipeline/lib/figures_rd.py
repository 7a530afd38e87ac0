"""The report's rate–distortion figure: bytes per image against pooled PSNR and SSIM, the variants beside classical
codecs, over the whole range and close up on the variants' compact forms (their points crowd into a few bytes and
a dB at full range)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from pipeline.lib import plotting
from pipeline.lib.plotting import plt  # plotting sets the backend before pyplot loads
from pipeline.lib.rate_distortion import MOONSHOT

# a variant's storage form -> marker; the default "*" is the entropy-coded stream
MARKERS = {"float32": "s", "uint8": "^", "uint8 range-coded": "v", "entropy-coded one file per image": "P"}
# the classical codecs in black and greys, each its own line style and marker: the colours are the variants'
BASELINE_STYLES = [
    (colour, style, marker)
    for style, marker in (("-", "o"), ("--", "s"), ("-.", "D"), (":", "^"))
    for colour in ("black", "dimgrey", "darkgrey")
]
METRICS = {"psnr_pooled": "pooled PSNR (dB)", "ssim": "SSIM"}


def rate_distortion(table: pd.DataFrame, out: Path, colours: dict) -> None:
    """Top: each baseline a line over its settings, each variant's storage forms as markers in the variant's colour
    (`colours`), lossless codecs (infinite PSNR) as vertical lines, the moonshot in red. Bottom: the same, close up
    on the variants' points but float32 (4 bytes a dimension). One legend below: variants, forms, codecs."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    points = _variant_points(table)
    for column, metric in enumerate(METRICS):
        for ax in axes[:, column]:
            _draw(ax, table, points, metric, colours)
        _close_up(axes[1, column], points, metric)
        axes[1, column].set_title(f"close up: the variants' forms but float32 ({METRICS[metric]})", fontsize=9)
    fig.suptitle(
        "rate–distortion on the test set (red: the moonshot, ≤ {bytes_per_image} B at ≥ {psnr_pooled} dB)".format(
            **MOONSHOT
        )
    )
    fig.tight_layout()
    handles, labels = _legend(table, points, colours, axes[0, 0])
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=4, fontsize=7)
    plotting.save(fig, out, bbox_inches="tight")


def _draw(ax, table: pd.DataFrame, points: dict, metric: str, colours: dict) -> None:
    baselines = table[table.kind == "baseline"].groupby("method", sort=False)
    for (method, group), (colour, style, marker) in zip(baselines, itertools.cycle(BASELINE_STYLES)):
        lossy = group.dropna(subset=["psnr_pooled"]).sort_values("bytes_per_image")
        if len(lossy):
            ax.plot(lossy.bytes_per_image, lossy[metric], ls=style, marker=marker, ms=3, color=colour, label=method)
        for size in group[group.psnr_pooled.isna()].bytes_per_image:
            ax.axvline(size, ls=":", color="gray")
            where = ax.get_xaxis_transform()
            ax.text(size, 0.02, f" {method} lossless", rotation=90, transform=where, fontsize=7, clip_on=True)
    for (method, form), point in points.items():
        colour = colours[method]
        ax.scatter(
            point.bytes_per_image,
            point[metric],
            marker=_marker(form),
            edgecolors=colour,
            facecolors="none" if _hollow(form) else colour,
            s=60 if form == "entropy-coded" else 30,
            label=f"{method} {form}",
            zorder=3,
        )
    if metric == "psnr_pooled":
        ax.axhline(MOONSHOT["psnr_pooled"], color="red", lw=0.8, ls="--")
        ax.axvline(MOONSHOT["bytes_per_image"], color="red", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="bytes per image (log)", ylabel=METRICS[metric])
    ax.grid(alpha=0.3, which="both")


def _close_up(ax, points: dict, metric: str) -> None:
    """Limits around the variants' points but float32 (all of them if that leaves none), and for PSNR the moonshot."""
    compact = [p for (_, form), p in points.items() if not form.startswith("float32")] or list(points.values())
    if not compact:
        return
    sizes = [p.bytes_per_image for p in compact]
    values = [p[metric] for p in compact if np.isfinite(p[metric])]
    if metric == "psnr_pooled":
        sizes, values = [*sizes, MOONSHOT["bytes_per_image"]], [*values, MOONSHOT["psnr_pooled"]]
    low, high = min(values), max(values)
    margin = max(0.1 * (high - low), 0.005 * abs(high))
    ax.set(xscale="linear", xlabel="bytes per image")  # a few bytes wide: log ticks would be all minor
    ax.set_xlim(min(sizes) / 1.15, max(sizes) * 1.15)
    ax.set_ylim(low - margin, high + margin)


def _legend(table: pd.DataFrame, points: dict, colours: dict, ax) -> tuple[list, list[str]]:
    """Each variant once in its colour, each storage form once as its marker in grey, each codec's line."""
    variants = list(dict.fromkeys(method for method, _ in points))
    forms = list(dict.fromkeys(form for _, form in points))
    entries = [(Line2D([], [], ls="", marker="o", color=colours[v]), v) for v in variants]
    for form in forms:
        fill = "none" if _hollow(form) else "full"
        entries.append((Line2D([], [], ls="", marker=_marker(form), color="grey", fillstyle=fill), form))
    codecs = set(table.method[table.kind == "baseline"])
    entries += [(line, line.get_label()) for line in ax.get_lines() if line.get_label() in codecs]
    return [handle for handle, _ in entries], [label for _, label in entries]


def _marker(form: str) -> str:
    return MARKERS.get(form.split(",")[0], "*")


def _hollow(form: str) -> bool:
    return "refined" in form  # the codec's refined latents: the same marker as the encoder's, not filled


def _variant_points(table: pd.DataFrame) -> dict:
    variants = table[table.kind == "variant"]
    return {(row.method, row.setting.rsplit(",", 1)[0]): row for _, row in variants.iterrows()}  # drop ", N dims"
