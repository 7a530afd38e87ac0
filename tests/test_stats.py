"""Seed aggregation, Welch tests and the generated findings, on inputs whose answers are known."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml

from pipeline import paths
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
    rows = report_text.pairwise_markdown(table).splitlines()[2:]
    assert [row.split("|")[-2].strip() for row in rows] == ["True", "–", "–"]
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
    labels = stats.position_labels(specs)
    assert labels["model01"] == "model01 (layer 3)" and labels["model04_linear"] == "model04_linear (layer 1)"
    assert "lonely" not in labels  # in no family: its name alone


def study_case(mse: dict[str, list[float]], dead: dict[str, float] | None = None, collapsed: frozenset = frozenset()):
    runs = runs_table(mse)
    runs["dead_latent_units"] = runs.variant.map(dead or {}).fillna(0)
    for column in ("psnr_pooled", "ssim"):
        runs[column] = 1.0
    summary = stats.aggregate(runs, ["mse", "psnr_pooled", "ssim", "dead_latent_units"])
    specs = {name: {**STUDY_SPEC, "decoder_strides": STRIDES[name]} for name in mse}
    reference = yaml.safe_load(paths.REFERENCE_FILE.read_text())
    return report_findings.findings(summary, stats.pairwise_welch(runs, "mse"), specs, reference, collapsed)


def test_findings_state_the_best_variant_and_which_differences_are_real():
    lines = study_case(
        {
            "model01": [0.010, 0.011, 0.012],
            "model02": [0.030, 0.031, 0.029],
            "model03": [0.0115, 0.0125, 0.0100],
            "model04": [0.020, 0.021, 0.022],
        },
        dead={"model02": 19},
    )
    text = "\n".join(lines)
    assert "Lowest mean test MSE over 3 seeds: **model01** (MSE 0.01100 ± 0.00100" in text
    assert "Significantly worse than model01" in text and ": model02, model04." in text
    assert "Not distinguishable from model01 with 3 seeds: model03." in text
    assert (
        "model01 (layer 3) < model03 (layer 2) < model04 (layer 1) < model02 (layer 4) (the last 172.7% above the "
        "first; the study's order: layer 3 < 2 < 1 < 4)"
    ) in text
    assert (
        "5 of 6 pairs significant (model01 (layer 3) below model02 (layer 4), as in the study's order; model01 "
        "(layer 3) below model04 (layer 1), as in the study's order; model03 (layer 2) below model02 (layer 4), as in "
        "the study's order; model04 (layer 1) below model02 (layer 4), as in the study's order; model03 (layer 2) "
        "below model04 (layer 1), as in the study's order), so the upsampling position makes a difference larger than "
        "the seed spread"
    ) in text
    assert "Dead latent units (mean over seeds): model02 19.0; every other variant 0." in text


def test_findings_say_when_nothing_exceeds_the_seed_spread():
    noisy = {
        "model01": [0.010, 0.020, 0.015],
        "model02": [0.012, 0.022, 0.011],
        "model03": [0.019, 0.009, 0.016],
        "model04": [0.014, 0.018, 0.010],
    }
    text = "\n".join(study_case(noisy))
    assert "Significantly worse than" in text and "): none." in text
    assert (
        "0 of 6 pairs significant, so no difference between upsampling positions is detected with these seeds (each "
        "variant's seed std is 28.6%–40.6% of its mean MSE)."
    ) in text
    assert "the study's order: layer 3 < 2 < 1 < 4" in text
    assert "Dead latent units" not in text


def test_a_matrix_with_some_of_the_positions_is_compared_on_those():
    text = "\n".join(study_case({"model01": [0.010, 0.011, 0.012], "model03": [0.020, 0.021, 0.022]}))
    assert (
        "model01 (layer 3) < model03 (layer 2) (the last 90.9% above the first; the study's order among these "
        "positions: layer 3 < 2)" in text
    )


def test_a_variant_with_a_dead_unit_in_some_seeds_is_not_counted_as_none():
    mse = {"model01": [0.010, 0.011, 0.012], "model03": [0.020, 0.021, 0.022]}
    text = "\n".join(study_case(mse, dead={"model03": 1 / 3}))
    assert "Dead latent units (mean over seeds): model03 0.3; every other variant 0." in text


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


def test_a_pair_without_spread_is_named_untestable_not_indistinguishable():
    text = "\n".join(study_case({"model01": [0.25] * 3, "model02": [0.5] * 3, "model03": [0.3, 0.4, 0.5]}))
    assert "Not distinguishable from model01 with 3 seeds: model03." in text  # tested: model03 has a spread
    assert "Not testable against it (no spread over seeds on either side): model02." in text
    assert "0 of 3 pairs significant, 1 not testable (no spread over seeds), so no difference between " in text
    assert (
        "is detected among the tested pairs with these seeds (each variant's seed std is 0.0%–25.0% of its mean MSE); "
        in text
    )
    assert text.rstrip().endswith("the others unknown.")


def test_differences_that_only_collapsed_runs_make_are_not_credited_to_the_upsampling_position():
    mse = {"model01": [0.0100, 0.0110, 0.0105], "model02": [0.110, 0.112, 0.111], "model03": [0.0104, 0.0112, 0.0101]}
    text = "\n".join(study_case(mse, collapsed=frozenset({"model02"})))
    assert "only pairs with collapsed runs (model02) differ: failed training, not the upsampling position" in text
    assert "the upsampling position makes a difference" not in text
    assert "the upsampling position makes a difference" in "\n".join(study_case(mse))  # the same numbers, not collapsed


def test_dead_units_in_every_variant_claim_no_other_variant():
    mse = {"model01": [0.010, 0.011, 0.012], "model03": [0.020, 0.021, 0.022]}
    text = "\n".join(study_case(mse, dead={"model01": 2, "model03": 1}))
    assert "Dead latent units (mean over seeds): model01 2.0, model03 1.0." in text and "every other" not in text


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
    (line,) = report_findings.twin_finding(summary, tests)
    adjusted = tests.set_index(["a", "b"]).p_adjusted["model01", "model01_linear"]
    assert f"model01 0.00423 → model01_linear 0.00309 (-27.0%, adjusted p {adjusted:.3f}" in line
    assert report_findings.twin_finding(summary.loc[["m"]], tests) == []  # no twins: nothing to say


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


def test_a_family_whose_pairs_cannot_be_tested_says_nothing_of_the_position():
    text = "\n".join(study_case({"model01": [0.25] * 3, "model02": [0.5] * 3}))
    assert "0 of 1 pairs significant, 1 not testable (no spread over seeds), so nothing can be said of the " in text


def test_a_significant_pair_is_said_to_agree_with_the_studys_order_or_to_go_against_it():
    text = "\n".join(study_case({"model02": [0.010, 0.0101, 0.0099], "model04": [0.020, 0.0201, 0.0199]}))
    assert "1 of 1 pairs significant (model02 (layer 4) below model04 (layer 1), against the study's order)" in text
    text = "\n".join(study_case({"model01": [0.010, 0.0101, 0.0099], "model04": [0.020, 0.0201, 0.0199]}))
    assert "1 of 1 pairs significant (model01 (layer 3) below model04 (layer 1), as in the study's order)" in text
