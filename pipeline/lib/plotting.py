"""What the report's figures share: saving without offset axes, distinct colours, and colours that pair the variants
of decoder families that upsample at the same layer (model01 beside model01_linear)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from pipeline.lib import stats  # noqa: E402
from pipeline.lib.io import atomic_write  # noqa: E402


def save(fig: Figure, out: Path, **kwargs) -> None:
    plain_ticks(fig)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format=out.suffix.lstrip("."), dpi=110, **kwargs))
    plt.close(fig)


def plain_ticks(fig: Figure) -> None:
    """Tick labels that read as they are: no offset ("1e-10 + 2.94e-3") and no scientific multiplier on any axis."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            formatter = axis.get_major_formatter()
            if isinstance(formatter, ScalarFormatter):  # log axes have their own formatter, without an offset
                formatter.set_useOffset(False)
                formatter.set_scientific(False)


def palette(n: int) -> list:
    """n colours, no two alike (the default cycle repeats after 10): tab20's ten hues first, then their light
    shades, then evenly spaced hues beyond 20."""
    tab20 = plt.get_cmap("tab20").colors
    if n <= 20:
        return list(tab20[0::2] + tab20[1::2])[:n]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def min_span(ax, fraction: float = 0.01) -> None:
    """A y range of at least `fraction` of the values' size, so seeds that agree to 1e-9 read as agreeing (a flat
    row of dots), not as a spread magnified to fill the axis."""
    low, high = ax.get_ylim()
    span = fraction * max(abs(low), abs(high))
    if high - low < span:
        ax.set_ylim((low + high - span) / 2, (low + high + span) / 2)


def spread(n: int, half_width: float) -> np.ndarray:
    """n offsets evenly across ±half_width, side by side; one alone in the middle."""
    return np.linspace(-half_width, half_width, n) if n > 1 else np.zeros(n)


SHADES = 4  # tab20c: five hues, each in four shades from dark to light


def paired_groups(variants: list[str], specs: dict[str, dict]) -> list[list[str]]:
    """The groups of `stats.decoder_groups` whose variants the figures pair by upsampling layer, in order of
    appearance: those of two or more variants or whose layer another group shares, the largest SHADES of them."""
    groups = stats.decoder_groups({v: specs[v] for v in variants if v in specs})
    layers = [{stats.upsampling_position(specs[v]) for v in group} for group in groups]
    pairable = [
        g for i, g in enumerate(groups) if len(g) > 1 or any(layers[i] & s for s in layers[:i] + layers[i + 1 :])
    ]
    largest = sorted(pairable, key=len, reverse=True)[:SHADES]  # a stable sort: the first of equal sizes
    return [g for g in groups if g in largest]


def variant_colours(variants: list[str], specs: dict[str, dict]) -> dict[str, tuple]:
    """A colour per variant. The variants of `paired_groups` take their upsampling layer's hue in their group's
    shade: model01 dark blue, model01_linear light blue. The other variants take tab20b's dark hues. With no such
    group, beyond five layers or five other variants, or where two variants of a group share a layer: `palette`'s
    distinct colours."""
    groups = paired_groups(variants, specs)
    layer = {v: stats.upsampling_position(specs[v]) for group in groups for v in group}
    hues = list(dict.fromkeys(layer.values()))  # the first group's order: model01's hue first
    others = [v for v in variants if v not in layer]
    slots = {(i, layer[v]) for i, group in enumerate(groups) for v in group}
    if not groups or len(hues) > 5 or len(others) > 5 or len(slots) < len(layer):
        return dict(zip(variants, palette(len(variants))))
    step = 2 if len(groups) == 2 else 1  # two groups: dark and light, not dark and nearly dark
    tab20c, tab20b = plt.get_cmap("tab20c").colors, plt.get_cmap("tab20b").colors
    colours = {v: tab20c[SHADES * hues.index(layer[v]) + step * i] for i, group in enumerate(groups) for v in group}
    return colours | dict(zip(others, tab20b[0::SHADES]))


def layer_labels(variants: list[str], specs: dict[str, dict]) -> dict[str, str]:
    """ "model01 (layer 3)" on a figure's axis, where the variant upsamples: for each variant of a decoder family
    (`stats.families`, however many) and of `paired_groups`, the groups `variant_colours` pairs by layer (a lone twin
    beside its model)."""
    known = {v: specs[v] for v in variants if v in specs}
    family = [v for members in stats.families(known).values() for v in members]
    paired = [v for group in paired_groups(variants, specs) for v in group]
    return {v: stats.layer_label(v, specs[v]) for v in dict.fromkeys(family + paired)}


GROUP_MARKERS = ("o", "s", "D", "^")  # one per group of `paired_groups`


def variant_markers(variants: list[str], specs: dict[str, dict]) -> dict[str, str]:
    """A marker per variant, its group's (`paired_groups`): where two shades of a hue are hard to tell apart, the
    marker tells model01 from model01_linear; "o" for the other variants."""
    groups = paired_groups(variants, specs)
    return {v: "o" for v in variants} | {v: GROUP_MARKERS[i] for i, group in enumerate(groups) for v in group}
