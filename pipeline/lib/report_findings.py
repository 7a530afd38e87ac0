"""The report's findings: sentences generated from the numbers only, at the top of reports/report.md."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.lib import stats


def findings(
    summary: pd.DataFrame,
    tests: pd.DataFrame,
    specs: dict[str, dict],
    reference: dict,
    collapsed: frozenset[str] = frozenset(),
) -> list[str]:
    """Sentences generated from the numbers only: the best variant, significance, and the study's question.
    collapsed: the variants with a run whose model decodes every image to the same image."""
    best = summary.mse_mean.idxmin()
    n = int(summary.n.min())
    row = summary.loc[best]
    lines = [
        f"- Best variant by mean test MSE over {counted(n, 'seed')}: **{best}** (MSE {plus_minus(row, 'mse', '.5f')}, "
        f"pooled PSNR {plus_minus(row, 'psnr_pooled', '.2f')} dB, SSIM {plus_minus(row, 'ssim', '.4f')})."
    ]
    if n < 2:
        return lines + [
            "- With one seed per variant no difference can be told from seed-to-seed luck; "
            "list more `seeds:` in params.yaml."
        ]
    involving = tests[(tests.a == best) | (tests.b == best)]
    others = lambda frame: [b if a == best else a for a, b in zip(frame.a, frame.b)]  # noqa: E731
    tested = involving.p.notna()
    worse, tied = others(involving[involving.significant]), others(involving[tested & ~involving.significant])
    untested = others(involving[~tested])
    lines.append(
        f"- Significantly worse than {best} (Welch's t-test on per-seed test MSE, Benjamini-Hochberg "
        f"adjusted p < {stats.ALPHA}): {', '.join(worse) or 'none'}. "
        f"Not distinguishable from {best} with {n} seeds: {', '.join(tied) or 'none'}."
        + (
            f" Not testable against it (no spread over seeds on either side): {', '.join(untested)}."
            if untested
            else ""
        )
    )
    for label, members in stats.families(specs).items():
        lines.append(_family_finding(label, members, summary, tests, specs, reference, collapsed))
    dead = summary[summary.dead_latent_units_mean > 0]
    if len(dead):
        lines.append(
            "- Dead latent units (mean over seeds): "
            + ", ".join(f"{v} {r.dead_latent_units_mean:.1f}" for v, r in dead.iterrows())
            + ("; every other variant 0." if len(dead) < len(summary) else ".")
        )
    return lines


def _family_finding(
    label: str,
    members: list[str],
    summary: pd.DataFrame,
    tests: pd.DataFrame,
    specs: dict[str, dict],
    reference: dict,
    collapsed: frozenset[str],
) -> str:
    ordered = summary.loc[members].sort_values("mse_mean").index
    positions = [stats.upsampling_position(specs[v]) for v in ordered]
    inside = tests[tests.a.isin(members) & tests.b.isin(members)]
    study = sorted(reference["upsampling_layer"], key=lambda m: reference["reported"][m]["mse"])
    study_positions = [reference["upsampling_layer"][m] for m in study]
    compared = [p for p in study_positions if p in positions]  # a matrix may hold only some of the positions
    same_order = "the same order as" if positions == compared else "a different order from"
    among = "" if compared == study_positions else " among these positions"
    hits = inside[inside.significant]
    pairs = f" ({', '.join(f'{a}–{b}' for a, b in zip(hits.a, hits.b))})" if len(hits) else ""
    untested = int(inside.p.isna().sum())
    untested_note = f", {untested} not testable (no spread over seeds)" if untested else ""
    return (
        f"- Decoder family ({label}): by mean MSE "
        + " < ".join(f"{v} (layer {p})" for v, p in zip(ordered, positions))
        + f", {same_order} the study's{among} (layer {' < '.join(map(str, compared))}); "
        + f"{len(hits)} of {len(inside)} pairs significant{pairs}{untested_note}, so {_verdict(hits, collapsed)}."
    )


def _verdict(hits: pd.DataFrame, collapsed: frozenset[str]) -> str:
    """What the significant pairs of one decoder family say about the upsampling position."""
    sound = hits[~hits.a.isin(collapsed) & ~hits.b.isin(collapsed)]
    if len(sound):
        return "the upsampling position makes a difference larger than the seed spread"
    if len(hits):
        named = ", ".join(sorted(set(hits.a).union(hits.b) & collapsed))
        return f"only pairs with collapsed runs ({named}) differ: failed training, not the upsampling position"
    return "no difference between upsampling positions exceeds the seed spread"


def counted(n: int, noun: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def plus_minus(row: pd.Series, column: str, fmt: str) -> str:
    """A summary row's mean ± std of column; the mean alone where one seed leaves no std."""
    std = row[f"{column}_std"]
    fmt = spread_format(std, fmt)
    return f"{row[f'{column}_mean']:{fmt}}" + ("" if np.isnan(std) else f" ± {std:{fmt}}")


def spread_format(std: float, fmt: str) -> str:
    """fmt (fixed point, e.g. ".5f"), with decimals added down to the std's first significant digit where fmt would
    round a nonzero std to zero: "± 0.00000" would read as seeds that agree exactly."""
    decimals = int(fmt[1:-1])
    if std > 0 and round(std, decimals) == 0:
        decimals = -math.floor(math.log10(std))
    return f".{decimals}f"


def published_weights_finding(check: pd.DataFrame, band: float) -> list[str]:
    if check.empty:
        return []
    outside = check[~check[f"at_most_{band:.0%}_above"]]
    named = ", ".join(
        f"{r.variant} seed {r.seed} ({r.ratio:.2f}×, {int(r.dead_latent_units)} dead latent units against "
        f"{int(r.dead_latent_units_published)})"
        for r in outside.itertuples()
    )
    return [
        f"- Against the study's published weights: {len(check) - len(outside)} of {len(check)} runs of the study's "
        f"models reach a test MSE at most {band:.0%} above theirs" + (f"; above that: {named}." if named else ".")
    ]


def collapsed_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The runs whose model decodes every test image to the same image (evaluate's `collapsed`; metrics from before
    it have no such key and are not named)."""
    return results[results.collapsed.eq(True)] if "collapsed" in results else results.iloc[:0]


def collapsed_variants(results: pd.DataFrame) -> frozenset[str]:
    return frozenset(collapsed_runs(results).variant)


def collapsed_finding(results: pd.DataFrame) -> list[str]:
    collapsed = collapsed_runs(results)
    if collapsed.empty:
        return []
    named = ", ".join(f"{r.variant} seed {r.seed}" for r in collapsed.itertuples())
    return [
        f"- Collapsed (every test image decodes to the same image): {named}; the means and tests above include them."
    ]
