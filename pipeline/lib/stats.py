"""Seed statistics for the report: mean ± std and 95% intervals per variant, pairwise Welch t-tests.

Inputs are tables with one row per training run (variant, seed). With one seed per variant there is no
spread to compare against, and every test result says so instead of claiming anything.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05


def aggregate(
    runs: pd.DataFrame,
    columns: list[str],
    floors: dict[str, float] | None = None,
    ceilings: dict[str, float | str] | None = None,
) -> pd.DataFrame:
    """Per variant and column: n, mean, std (ddof=1), and the 95% t-interval of the mean, clipped to the column's
    floor and ceiling where it has them (a count's interval from three seeds can reach below zero, or above the
    latent's size). A ceiling given as a string names the column of runs that holds it, e.g. "latent_dim"."""
    floors, ceilings = floors or {}, ceilings or {}
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        row = {"variant": variant, "n": len(group)}
        for column in columns:
            mean, std, (low, high) = _mean_interval(group[column].to_numpy(dtype=float))
            ceiling = ceilings.get(column, np.inf)
            low = max(low, floors.get(column, -np.inf))  # max and min keep a single seed's NaN, their first argument
            high = min(high, ceiling if not isinstance(ceiling, str) else group[ceiling].max())
            row.update(
                {f"{column}_mean": mean, f"{column}_std": std, f"{column}_ci_low": low, f"{column}_ci_high": high}
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def _mean_interval(values: np.ndarray) -> tuple[float, float, tuple[float, float]]:
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), (float("nan"), float("nan"))
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(1 - ALPHA / 2, len(values) - 1)) * std / np.sqrt(len(values))
    return mean, std, (mean - half, mean + half)


def pairwise_welch(runs: pd.DataFrame, column: str, variants: list[str] | None = None) -> pd.DataFrame:
    """Welch's t-test of `column` for each pair of variants, Benjamini-Hochberg adjusted over all pairs, with the
    95% interval of the difference (`ci_low`, `ci_high`; the pair's own, not adjusted).

    A pair is `significant` when its adjusted p < 0.05; pairs with fewer than two seeds on a side, or no
    spread at all, get p = NaN and are never significant.
    """
    groups = {v: g[column].to_numpy(dtype=float) for v, g in runs.groupby("variant", sort=False)}
    variants = variants or list(groups)
    rows = []
    for a, b in itertools.combinations(variants, 2):
        x, y = groups[a], groups[b]
        p, interval = float("nan"), (float("nan"), float("nan"))
        if min(len(x), len(y)) >= 2 and (x.std() > 0 or y.std() > 0):
            test = stats.ttest_ind(x, y, equal_var=False)
            p, interval = float(test.pvalue), tuple(map(float, test.confidence_interval(1 - ALPHA)))
        means = {"mean_a": x.mean(), "mean_b": y.mean(), "difference": x.mean() - y.mean()}
        rows.append({"a": a, "b": b, **means, "ci_low": interval[0], "ci_high": interval[1], "p": p})
    table = pd.DataFrame(rows, columns=["a", "b", "mean_a", "mean_b", "difference", "ci_low", "ci_high", "p"])
    tested = table.p.notna()
    table["p_adjusted"] = np.nan
    if tested.any():
        table.loc[tested, "p_adjusted"] = stats.false_discovery_control(table.p[tested].to_numpy(), method="bh")
    table["significant"] = table.p_adjusted < ALPHA
    return table


def decoder_groups(specs: dict[str, dict]) -> list[list[str]]:
    """The variants grouped by everything but their decoder strides (where they upsample), in order of appearance; a
    variant alike no other is a group of its own."""
    grouped: dict[str, list[str]] = {}
    for name, spec in specs.items():
        shared = {k: v for k, v in spec.items() if k not in ("decoder_strides", "description")}
        grouped.setdefault(repr(sorted(shared.items(), key=str)), []).append(name)
    return list(grouped.values())


def families(specs: dict[str, dict]) -> dict[str, list[str]]:
    """Groups of two or more variants that differ only in their decoder strides (where they upsample).

    Keyed by what the family's members share, e.g. "latent relu, init glorot_uniform".
    """
    labelled = {}
    for names in (n for n in decoder_groups(specs) if len(n) > 1):
        spec = specs[names[0]]
        label = f"latent {spec['latent_activation']}, init {spec['init']}"
        labelled[label if label not in labelled else f"{label} ({names[0]}, ...)"] = names
    return labelled


def upsampling_position(spec: dict) -> int:
    """1-based index of the decoder layer that upsamples (the first with the largest stride)."""
    strides = spec["decoder_strides"]
    return strides.index(max(strides)) + 1


def layer_label(name: str, spec: dict) -> str:
    """ "model01 (layer 3)": a variant named with the decoder layer that upsamples, in the findings and on figures."""
    return f"{name} (layer {upsampling_position(spec)})"
