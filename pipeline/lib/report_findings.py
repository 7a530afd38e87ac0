"""The report's findings: sentences generated from the numbers only, at the top of reports/report.md."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

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
        f"- Lowest mean test MSE over {counted(n, 'seed')}: **{best}** ({'mean ± seed std: ' if n > 1 else ''}"
        f"MSE {plus_minus(row, 'mse', '.5f')}, "
        f"pooled PSNR {plus_minus(row, 'psnr_pooled', '.2f')} dB, SSIM {plus_minus(row, 'ssim', '.4f')})."
    ]
    if n < 2:
        return lines + [
            "- With one seed per variant no difference can be told from seed-to-seed luck; "
            "list more `seeds:` in params.yaml."
        ]
    lines.append(_against_the_best(tests, best, n))
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


def _against_the_best(tests: pd.DataFrame, best: str, n: int) -> str:
    """Which variants are significantly worse than the best, which cannot be told from it, which were not tested."""
    involving = tests[(tests.a == best) | (tests.b == best)]
    others = lambda frame: [b if a == best else a for a, b in zip(frame.a, frame.b)]  # noqa: E731
    tested = involving.p.notna()
    worse, tied = others(involving[involving.significant]), others(involving[tested & ~involving.significant])
    untested = others(involving[~tested])
    return (
        f"- Significantly worse than {best} (Welch's t-test on per-seed test MSE, Benjamini-Hochberg "
        f"adjusted p < {stats.ALPHA}): {', '.join(worse) or 'none'}. "
        f"Not distinguishable from {best} with {n} seeds: {', '.join(tied) or 'none'}."
        + (
            f" Not testable against it (no spread over seeds on either side): {', '.join(untested)}."
            if untested
            else ""
        )
    )


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
    among = "" if compared == study_positions else " among these positions"
    hits = inside[inside.significant]
    rank = {layer: i for i, layer in enumerate(compared)}
    pairs = "; ".join(_against_the_study(a, b, summary, specs, rank) for a, b in zip(hits.a, hits.b))
    untested = int(inside.p.isna().sum())
    untested_note = f", {untested} not testable (no spread over seeds)" if untested else ""
    tested = int(tests.p.notna().sum())  # the adjustment's pairs: every tested pair, not the family's alone
    every = "all " if tested > 1 else "the "
    adjusted = f" with p adjusted over {every}{counted(tested, 'tested pair')}" if untested < len(inside) else ""
    means = summary.mse_mean[ordered]
    spread = (summary.mse_std / summary.mse_mean)[members]
    return (
        f"- Decoder family ({label}): by mean MSE "
        + " < ".join(stats.layer_label(v, specs[v]) for v in ordered)
        + f" (the last {means.iloc[-1] / means.iloc[0] - 1:.1%} above the first; the study's order{among}: "
        + f"layer {' < '.join(map(str, compared))}); "
        + f"{len(hits)} of {len(inside)} pairs significant{adjusted}{f' ({pairs})' if len(hits) else ''}"
        + f"{untested_note}, "
        + f"so {_verdict(hits, collapsed, untested, len(inside), _noise(spread, inside))}."
    )


def _noise(spread: pd.Series, pairs: pd.DataFrame) -> str:
    """What these seeds can miss, said where no pair is significant: the members' seed std relative to their mean
    MSE, and the largest difference (relative to the pair's better mean) inside a tested pair's own 95% interval."""
    tested = pairs[pairs.p.notna()]
    reach = np.maximum(tested.ci_low.abs(), tested.ci_high.abs()) / np.minimum(tested.mean_a, tested.mean_b)
    return (
        f"each variant's seed std is {_span(spread, '.1%')} of its mean MSE; a difference of up to {reach.max():.0%} "
        "of the better mean lies inside one pair's unadjusted 95% interval"
    )


def _against_the_study(a: str, b: str, summary: pd.DataFrame, specs: dict[str, dict], rank: dict[int, int]) -> str:
    """A significant pair, better first, and whether the study's order of the two layers agrees (`rank`: the study's
    place of each layer it has a model at)."""
    better, worse = sorted((a, b), key=lambda v: summary.mse_mean[v])
    layers = [stats.upsampling_position(specs[v]) for v in (better, worse)]
    pair = f"{stats.layer_label(better, specs[better])} below {stats.layer_label(worse, specs[worse])}"
    if layers[0] == layers[1]:
        return f"{pair}, the same layer"
    unranked = [layer for layer in layers if layer not in rank]
    if unranked:
        return f"{pair}, the study has no model at layer {unranked[0]}"
    return f"{pair}, {'as in' if rank[layers[0]] < rank[layers[1]] else 'against'} the study's order"


def _verdict(hits: pd.DataFrame, collapsed: frozenset[str], untested: int, pairs: int, noise: str) -> str:
    """What the significant pairs of one decoder family say about the upsampling position; noise: what these seeds
    can detect (`_noise`)."""
    sound = hits[~hits.a.isin(collapsed) & ~hits.b.isin(collapsed)]
    if len(sound):
        apart = np.maximum(sound.mean_a, sound.mean_b) / np.minimum(sound.mean_a, sound.mean_b) - 1
        return (
            "the upsampling position makes a difference larger than the seed spread (the significant pairs "
            f"{_span(apart, '.1%')} apart, of the better one's MSE)"
        )
    if untested == pairs:
        return "nothing can be said of the upsampling position"
    if len(hits):
        named = ", ".join(sorted(set(hits.a).union(hits.b) & collapsed))
        unknown = "; the untested pairs are unknown" if untested else ""
        return f"only pairs with collapsed runs ({named}) differ: failed training, not the upsampling position{unknown}"
    noise = f"with these seeds ({noise})"
    if untested:
        return (
            f"no difference between upsampling positions is detected among the tested pairs {noise}; the others unknown"
        )
    return f"no difference between upsampling positions is detected {noise}"


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
    below = check[check.ratio < 1 - band]
    return [
        f"- Against the study's published weights: {len(check) - len(outside)} of {len(check)} runs of the study's "
        f"models reach a test MSE at most {band:.0%} above theirs"
        + (f"; above that: {_runs_against_published(outside)}" if len(outside) else "")
        + (f"; more than {band:.0%} below: {_runs_against_published(below)}" if len(below) else "")
        + "."
    ]


def _runs_against_published(check: pd.DataFrame) -> str:
    """Per variant: its seeds, their MSE over the published weights' and dead units against the published ones."""
    parts = []
    for variant, runs in check.groupby("variant", sort=False):
        ratio, dead = runs.ratio, runs.dead_latent_units.astype(int)
        parts.append(
            f"{variant} seed{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs.seed))} "
            f"({_span(ratio, '.2f')}×, {_span(dead, 'd')} dead latent units against "
            f"{int(runs.dead_latent_units_published.iloc[0])})"
        )
    return ", ".join(parts)


def _span(values: pd.Series, fmt: str) -> str:
    low, high = values.min(), values.max()
    return f"{low:{fmt}}" if low == high else f"{low:{fmt}}–{high:{fmt}}"


def twin_finding(summary: pd.DataFrame, tests: pd.DataFrame, results: pd.DataFrame) -> list[str]:
    """Each variant beside its `_linear` twin: the same model with a linear latent, where no unit can die; with two
    or more such pairs, their runs pooled (`_pooled_twins`)."""
    models = [relu for relu in summary.index if f"{relu}_linear" in summary.index]
    cells = [
        f"{relu} {summary.mse_mean[relu]:.5f} → {relu}_linear {summary.mse_mean[f'{relu}_linear']:.5f} "
        f"({summary.mse_mean[f'{relu}_linear'] / summary.mse_mean[relu] - 1:+.1%}, "
        f"{_pair_verdict(tests, relu, f'{relu}_linear')})"
        for relu in models
    ]
    if not cells:
        return []
    return [
        "- Each model against its `_linear` twin (a linear latent: no unit can die), mean test MSE: "
        + "; ".join(cells)
        + f".{_pooled_twins(results, models)}"
    ]


def _pooled_twins(results: pd.DataFrame, models: list[str]) -> str:
    """The twins' runs against the models' runs, pooled: how often a twin's run is below a model's, and a Mann-Whitney
    U test of its own, outside the pairs' adjustment (exact where no two runs tie). Only where each model has as many
    runs as its twin, so that no model weighs more on one side, and every run has a test MSE."""
    twins = [f"{model}_linear" for model in models]
    counts = results.variant.value_counts()
    relu, linear = (results.mse[results.variant.isin(side)].to_numpy(dtype=float) for side in (models, twins))
    balanced = all(counts[model] == counts[twin] for model, twin in zip(models, twins))
    if len(models) < 2 or min(len(relu), len(linear)) < 2 or not balanced or np.isnan([*relu, *linear]).any():
        return ""
    ties = len(np.unique([*relu, *linear])) < len(relu) + len(linear)
    test = mannwhitneyu(linear, relu, method="asymptotic" if ties else "exact")  # U: pairs with the twin's above
    pairs = len(linear) * len(relu)
    share = (
        "every `_linear` run below every run of the models"
        if test.statistic == 0
        else f"a `_linear` run below a run of the models in {1 - test.statistic / pairs:.0%} of the {pairs} run pairs"
    )
    return (
        f" Pooled over the {len(models)} model–twin pairs: {share} (Mann-Whitney U = {test.statistic:g}, "
        f"two-sided p = {test.pvalue:.2g} with each side's runs of all {len(models)} architectures taken as one "
        "sample; a test of its own, outside the pairs' adjustment)."
    )


def _pair_verdict(tests: pd.DataFrame, a: str, b: str) -> str:
    row = tests[((tests.a == a) & (tests.b == b)) | ((tests.a == b) & (tests.b == a))]
    if row.empty or pd.isna(row.p_adjusted.iloc[0]):
        return "not testable"
    p = row.p_adjusted.iloc[0]
    return f"adjusted p {'< 0.001' if p < 0.001 else f'{p:.3f}'}" + (
        "" if row.significant.iloc[0] else ", not significant"
    )


def dead_units_finding(results: pd.DataFrame, study: pd.DataFrame) -> list[str]:
    """The correlation of dead latent units and test MSE over the runs of the variants that have any (the study's
    confounder): pooled, and within variants (each variant's mean taken out, so that differences between the
    variants cannot make it), beside the published weights' counts."""
    dying = results[results.variant.isin(results.variant[results.dead_latent_units > 0])]
    dead, mse = dying.dead_latent_units.astype(float), dying.mse.astype(float)
    if len(dying) < 3 or dead.nunique() < 2 or mse.nunique() < 2:
        return []
    pooled = np.corrcoef(dead, mse)[0, 1]
    centred = [column - column.groupby(dying.variant).transform("mean") for column in (dead, mse)]
    within = f", {np.corrcoef(*centred)[0, 1]:.2f} within variants" if all(c.std() > 0 for c in centred) else ""
    published = study.dead_latent_units.dropna() if "dead_latent_units" in study else pd.Series(dtype=float)
    theirs = ", ".join(f"{v} {int(n)}" for v, n in published.items() if v in set(dying.variant))
    return [
        f"- Dead latent units against test MSE over the {len(dying)} runs of the "
        f"{counted(dying.variant.nunique(), 'variant')} that have any: Pearson r = {pooled:.2f} pooled{within}"
        + (f"; the published weights have {theirs}{_on_images(results)}" if theirs else "")
        + "."
    ]


def _on_images(results: pd.DataFrame) -> str:
    """Where the runs' test split is known: dead units counted on other images (the study's text: 4,000) differ."""
    return f" (counted on the same {int(results.n_test.iloc[0])} test images)" if "n_test" in results else ""


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
