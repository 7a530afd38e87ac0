"""Seed aggregation, Welch tests and the generated findings (a decoder family's: tests/test_report_findings.py), on
inputs whose answers are known."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.lib import report_findings, report_text, stats

STUDY_SPEC = {
    "encoder_filters": [32, 64, 64, 64],
    "encoder_strides": [1, 2, 1, 1],
    "latent_dim": 32,
    "decoder_filters": [64, 64, 64, 32],
    "kernel_size": 3,
    "activation": "relu",
    "latent_activation": "relu",
    "output_activation": "sigmoid",
    "init": "glorot_uniform",
    "train": {},
}
STRIDES = {"model01": [1, 1, 2, 1], "model02": [1, 1, 1, 2], "model03": [1, 2, 1, 1], "model04": [2, 1, 1, 1]}


def runs_table(values: dict[str, list[float]], column: str = "mse") -> pd.DataFrame:
    rows = [{"variant": v, "seed": s, column: x} for v, xs in values.items() for s, x in enumerate(xs)]
    return pd.DataFrame(rows)


def test_aggregate_mean_std_and_t_interval():
    summary = stats.aggregate(runs_table({"a": [1.0, 2.0, 3.0], "b": [5.0]}), ["mse"])
    a = summary.loc["a"]
    assert (a.n, a.mse_mean, a.mse_std) == (3, 2.0, 1.0)
    half = 4.30265272975 / math.sqrt(3)  # t(0.975, df=2) * std / sqrt(n), from tables
    assert (a.mse_ci_low, a.mse_ci_high) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-10)
    b = summary.loc["b"]  # one seed: a mean, no spread, no interval
    assert b.mse_mean == 5.0 and math.isnan(b.mse_std) and math.isnan(b.mse_ci_low)
    assert list(summary.index) == ["a", "b"]  # params order, not sorted


def test_a_floor_raises_only_the_low_end_of_an_interval():
    runs = runs_table({"a": [0.0, 1.0, 0.0]}, "dead")
    free, floored = (stats.aggregate(runs, ["dead"], floors).loc["a"] for floors in (None, {"dead": 0.0}))
    assert free.dead_ci_low < 0 and floored.dead_ci_low == 0.0
    assert floored.dead_ci_high == free.dead_ci_high and floored.dead_mean == free.dead_mean
    one_seed = stats.aggregate(runs_table({"a": [0.0]}, "dead"), ["dead"], {"dead": 0.0}).loc["a"]
    assert math.isnan(one_seed.dead_ci_low)  # no interval, not one that starts at the floor


def test_welch_matches_the_textbook_formula():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0]
    table = stats.pairwise_welch(runs_table({"x": x, "y": y}), "mse")
    # t = (2.5 - 4) / sqrt(1.6667/4 + 4/3); Welch-Satterthwaite df = 3.0966; two-sided p from scipy's t
    from scipy.stats import t as student

    se2 = (5 / 3) / 4 + 4 / 3
    t_value = -1.5 / math.sqrt(se2)
    df = se2**2 / (((5 / 3) / 4) ** 2 / 3 + (4 / 3) ** 2 / 2)
    row = table.iloc[0]
    assert (row.a, row.b, row.difference) == ("x", "y", -1.5)
    assert row.p == pytest.approx(2 * student.sf(abs(t_value), df), rel=1e-10)
    assert row.p_adjusted == pytest.approx(row.p)  # one pair: nothing to adjust
    half = student.ppf(0.975, df) * math.sqrt(se2)
    assert (row.ci_low, row.ci_high) == (pytest.approx(-1.5 - half, rel=1e-10), pytest.approx(-1.5 + half, rel=1e-10))


def test_benjamini_hochberg_adjusts_over_all_pairs():
    table = stats.pairwise_welch(
        runs_table({"a": [1.0, 1.1, 0.9], "b": [5.0, 5.2, 4.8], "c": [1.05, 0.95, 1.2]}), "mse"
    )
    p = table.set_index(["a", "b"]).p
    adjusted = table.set_index(["a", "b"]).p_adjusted
    ranked = p.sort_values()
    m = len(p)
    expected_largest = ranked.iloc[-1]  # BH leaves the largest p unchanged
    assert adjusted[ranked.index[-1]] == pytest.approx(expected_largest)
    assert adjusted[ranked.index[0]] == pytest.approx(min(ranked.iloc[0] * m, ranked.iloc[1] * m / 2, ranked.iloc[2]))
    significant = set(table[table.significant].apply(lambda r: (r.a, r.b), axis=1))
    assert significant == {("a", "b"), ("b", "c")}


def test_no_spread_or_one_seed_is_never_significant():
    table = stats.pairwise_welch(runs_table({"a": [1.0, 1.0], "b": [2.0, 2.0], "c": [3.0]}), "mse")
    assert table.p.isna().all() and not table.significant.any()


def test_the_report_marks_untested_pairs_instead_of_calling_them_not_significant():
    table = stats.pairwise_welch(runs_table({"a": [1.0, 1.1, 0.9], "b": [5.0, 5.2, 4.8], "c": [3.0]}), "mse")
    text = report_text.pairwise_markdown(table)
    rows = [line for line in text.splitlines()[2:] if line.startswith("|")]
    assert [row.split("|")[-2].strip() for row in rows] == ["True", "–", "–"]
    assert [row.split("|")[7].strip() for row in rows][1:] == ["–", "–"]  # no interval where nothing is tested
    assert rows[0].split("|")[7].strip().startswith("[-4.")  # a − b is about −4: its interval, in fixed point
    assert text.splitlines()[-1].startswith("a_vs_b: (mean_a − mean_b) / mean_b")  # explained under its table only
    one_variant = stats.pairwise_welch(runs_table({"a": [1.0, 1.1]}), "mse")
    assert report_text.pairwise_markdown(one_variant) == "One variant: no pair to compare."


def test_families_group_variants_that_differ_only_in_decoder_strides():
    specs = {name: {**STUDY_SPEC, "decoder_strides": s, "description": name} for name, s in STRIDES.items()}
    specs.update({f"{n}_linear": {**s, "latent_activation": "linear"} for n, s in list(specs.items())})
    specs["lonely"] = {**STUDY_SPEC, "decoder_strides": [1, 1, 2, 1], "latent_dim": 8}
    groups = stats.families(specs)
    assert groups == {
        "latent relu, init glorot_uniform": list(STRIDES),
        "latent linear, init glorot_uniform": [f"{n}_linear" for n in STRIDES],
    }
    assert [stats.upsampling_position(specs[n]) for n in STRIDES] == [3, 4, 2, 1]


def test_a_spread_below_the_shown_digits_is_shown_to_its_first_digit_not_as_zero():
    summary = stats.aggregate(runs_table({"tight": [0.003061, 0.003058, 0.003064], "same": [0.003, 0.003]}), ["mse"])
    assert report_findings.plus_minus(summary.loc["tight"], "mse", ".5f") == "0.003061 ± 0.000003"
    assert report_findings.plus_minus(summary.loc["same"], "mse", ".5f") == "0.00300 ± 0.00000"  # no spread at all
    runs = runs_table({"tight": [0.003061, 0.003058, 0.003064]}).assign(
        **{c: 1.0 for c in report_text.SEED_COLUMNS if c != "mse"}
    )
    cells = report_text.seed_table(stats.aggregate(runs, report_text.SEED_COLUMNS))
    assert cells.mse["tight"] == "0.003061 ± 0.000003 [0.003054, 0.003068]"
    assert cells.ssim["tight"] == "1.0000 ± 0.0000 [1.0000, 1.0000]"
    assert cells.dead_latent_units["tight"] == "1.0 ± 0.0 [1.0, 1.0]"  # a count: to a tenth
    assert cells.effective_latent_dims["tight"] == "1.0 ± 0.0 [1.0, 1.0]"


def test_an_interval_stops_at_the_ceiling_a_column_names():
    runs = runs_table({"a": [28.0, 30.0, 31.0]}, "effective_latent_dims").assign(latent_dim=32, ssim=[0.99, 1.0, 1.0])
    summary = stats.aggregate(
        runs, ["effective_latent_dims", "ssim"], ceilings={"effective_latent_dims": "latent_dim", "ssim": 1.0}
    )
    a = summary.loc["a"]
    assert a.effective_latent_dims_ci_high == 32 and a.ssim_ci_high == 1.0
    assert a.effective_latent_dims_ci_low < 28.0 and a.ssim_ci_low < 0.99  # the low ends as computed


def test_a_variant_mean_is_missing_where_a_seed_lacks_the_value():
    results = pd.DataFrame(
        {"variant": ["a", "a", "b"], "seed": [0, 1, 0], "bytes_per_image_uint8_range": [27.0, float("nan"), 30.0]}
    )
    means = report_text.variant_means(results)
    assert (
        math.isnan(means.loc["a", "bytes_per_image_uint8_range"])
        and means.loc["b", "bytes_per_image_uint8_range"] == 30
    )


def test_each_model_is_set_beside_its_linear_twin_with_the_pairs_own_test():
    runs = runs_table({"model01": [0.0042, 0.0045, 0.0040], "model01_linear": [0.0031, 0.00309, 0.00308], "m": [1.0]})
    summary, tests = stats.aggregate(runs, ["mse"]), stats.pairwise_welch(runs, "mse")
    (line,) = report_findings.twin_finding(summary, tests, runs)
    adjusted = tests.set_index(["a", "b"]).p_adjusted["model01", "model01_linear"]
    assert f"model01 0.00423 → model01_linear 0.00309 (-27.0%, adjusted p {adjusted:.3f}" in line
    assert "Pooled" not in line  # one pair: nothing to pool
    assert report_findings.twin_finding(summary.loc[["m"]], tests, runs) == []  # no twins: nothing to say


@pytest.mark.parametrize(
    ("model02_linear", "said"),
    [
        ([0.00311, 0.0030, 0.0032], "every `_linear` run below every run of the models (Mann-Whitney U = 0, two-sided "
         "p = 0.0022 with each side's runs of all 2 architectures taken as one sample; "),  # no ties: exact, 2/C(12, 6)
        ([0.0031, 0.0041, 0.0043], "a `_linear` run below a run of the models in 82% of the 36 run pairs "
         "(Mann-Whitney U = 6.5, "),  # ties (0.0031, 0.0041) counted half
    ],
)  # fmt: skip
def test_with_two_or_more_twins_their_runs_are_pooled_against_the_models(model02_linear, said):
    mse = {"model01": [0.0042, 0.0045, 0.0040], "model02": [0.0038, 0.0041, 0.0044]}
    runs = runs_table(mse | {"model01_linear": [0.0031, 0.00309, 0.00308], "model02_linear": model02_linear})
    summary, tests = stats.aggregate(runs, ["mse"]), stats.pairwise_welch(runs, "mse")
    (line,) = report_findings.twin_finding(summary, tests, runs)
    assert f" Pooled over the 2 model–twin pairs: {said}" in line
    assert line.endswith("a test of its own, outside the pairs' adjustment).")


@pytest.mark.parametrize("flaw", ["a missing test MSE", "a model with more seeds than its twin"])
def test_twins_are_not_pooled_over_a_missing_value_or_uneven_seeds(flaw):
    mse = {"model01": [0.0042, 0.0045, 0.0040], "model02": [0.0038, 0.0041, 0.0044]}
    mse |= {"model01_linear": [0.0031, 0.00309, 0.00308], "model02_linear": [0.00311, 0.0030, 0.0032]}
    if flaw == "a missing test MSE":
        mse["model02_linear"][0] = float("nan")
    else:
        mse["model02"].append(0.0043)
    runs = runs_table(mse)
    (line,) = report_findings.twin_finding(stats.aggregate(runs, ["mse"]), stats.pairwise_welch(runs, "mse"), runs)
    assert "Pooled" not in line


def test_dead_units_are_correlated_with_mse_over_the_runs_of_the_variants_that_have_any():
    runs = runs_table({"a": [0.004, 0.005, 0.006], "b": [0.003, 0.003, 0.003]}).assign(
        dead_latent_units=[2, 4, 6, 0, 0, 0]
    )
    study = pd.DataFrame({"dead_latent_units": [4.0, 18.0]}, index=["a", "other"])
    (line,) = report_findings.dead_units_finding(runs, study)
    assert line == (
        "- Dead latent units against test MSE over the 3 runs of the 1 variant that have any: Pearson r = 1.00 "
        "pooled, 1.00 within variants; the published weights have a 4."
    )
    assert report_findings.dead_units_finding(runs.assign(dead_latent_units=0), study) == []


def test_a_correlation_that_only_the_differences_between_variants_make_is_told_apart():
    # within each variant more dead units go with a lower MSE; the variant with more of both makes the pooled r
    runs = runs_table({"a": [0.006, 0.005, 0.004], "b": [0.016, 0.015, 0.014]}).assign(
        dead_latent_units=[1, 2, 3, 11, 12, 13]
    )
    (line,) = report_findings.dead_units_finding(runs, pd.DataFrame())
    assert "over the 6 runs of the 2 variants that have any: Pearson r = 0.95 pooled, -1.00 within variants." in line


def test_runs_far_better_than_the_published_weights_are_named_too():
    check = pd.DataFrame(
        {
            "variant": ["model01", "model02", "model02"],
            "seed": [0, 0, 1],
            "ratio": [1.1, 0.31, 0.36],
            "at_most_15%_above": [True, True, True],
            "dead_latent_units": [5, 3, 1],
            "dead_latent_units_published": [4, 18, 18],
        }
    )
    (line,) = report_findings.published_weights_finding(check, 0.15)
    assert line.endswith(
        "3 of 3 runs of the study's models reach a test MSE at most 15% above theirs; more than 15% below: model02 "
        "seeds 0, 1 (0.31–0.36×, 1–3 dead latent units against 18)."
    )


def test_the_pairwise_table_reads_in_fixed_point_with_the_relative_difference():
    table = report_text.pairwise_markdown(
        stats.pairwise_welch(runs_table({"a": [0.0042, 0.0044], "b": [0.004, 0.0041]}), "mse")
    )
    row = table.splitlines()[2]
    assert "0.004300" in row and "0.004050" in row and "+0.000250" in row and "+6.2%" in row
