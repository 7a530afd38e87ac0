"""The findings of a decoder family: its order beside the study's, each significant pair against the study's order,
and what the seeds can detect, on inputs whose answers are known (pipeline.lib.report_findings)."""

from __future__ import annotations

import pandas as pd
import yaml

from pipeline import paths
from pipeline.lib import report_findings, stats
from tests.test_stats import STRIDES, STUDY_SPEC, runs_table


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
    assert "Lowest mean test MSE over 3 seeds: **model01** (mean ± seed std: MSE 0.01100 ± 0.00100" in text
    assert "Significantly worse than model01" in text and ": model02, model04." in text
    assert "Not distinguishable from model01 with 3 seeds: model03." in text
    assert (
        "model01 (layer 3) < model03 (layer 2) < model04 (layer 1) < model02 (layer 4) (the last 172.7% above the "
        "first; the study's order: layer 3 < 2 < 1 < 4)"
    ) in text
    assert (
        "5 of 6 pairs significant with p adjusted over all 6 tested pairs (model01 (layer 3) below model02 (layer 4), "
        "as in the study's order; model01 "
        "(layer 3) below model04 (layer 1), as in the study's order; model03 (layer 2) below model02 (layer 4), as in "
        "the study's order; model04 (layer 1) below model02 (layer 4), as in the study's order; model03 (layer 2) "
        "below model04 (layer 1), as in the study's order), so the upsampling position makes a difference larger than "
        "the seed spread (the significant pairs 42.9%–172.7% apart, of the better one's MSE)"
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
        "0 of 6 pairs significant with p adjusted over all 6 tested pairs, so no difference between upsampling "
        "positions is detected with these seeds (each variant's seed std is 28.6%–40.6% of its mean MSE; a "
        "difference of up to 96% of the better mean lies inside one pair's unadjusted 95% interval)."
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


def test_a_pair_without_spread_is_named_untestable_not_indistinguishable():
    text = "\n".join(study_case({"model01": [0.25] * 3, "model02": [0.5] * 3, "model03": [0.3, 0.4, 0.5]}))
    assert "Not distinguishable from model01 with 3 seeds: model03." in text  # tested: model03 has a spread
    assert "Not testable against it (no spread over seeds on either side): model02." in text
    assert (
        "0 of 3 pairs significant with p adjusted over all 2 tested pairs, 1 not testable (no spread over seeds), so "
        "no difference between " in text
    )
    assert (
        "is detected among the tested pairs with these seeds (each variant's seed std is 0.0%–25.0% of its mean MSE; "
        "a difference of up to 159% of the better mean lies inside one pair's unadjusted 95% interval); " in text
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


def test_a_family_whose_pairs_cannot_be_tested_says_nothing_of_the_position():
    text = "\n".join(study_case({"model01": [0.25] * 3, "model02": [0.5] * 3}))
    assert "0 of 1 pairs significant, 1 not testable (no spread over seeds), so nothing can be said of the " in text


def test_a_significant_pair_is_said_to_agree_with_the_studys_order_or_to_go_against_it():
    text = "\n".join(study_case({"model02": [0.010, 0.0101, 0.0099], "model04": [0.020, 0.0201, 0.0199]}))
    assert (
        "1 of 1 pairs significant with p adjusted over the 1 tested pair (model02 (layer 4) below model04 (layer 1), "
        "against the study's order)" in text
    )
    text = "\n".join(study_case({"model01": [0.010, 0.0101, 0.0099], "model04": [0.020, 0.0201, 0.0199]}))
    assert (
        "1 of 1 pairs significant with p adjusted over the 1 tested pair (model01 (layer 3) below model04 (layer 1), "
        "as in the study's order)" in text
    )


def test_a_pair_at_a_layer_the_study_has_no_model_at_or_at_one_layer_is_said_so():
    summary = pd.DataFrame({"mse_mean": {"a": 0.01, "b": 0.02, "c": 0.03}})
    specs = {"a": {"decoder_strides": [1, 1, 1, 1, 2]}, "b": {"decoder_strides": [2, 1, 1, 1, 1]}}
    specs["c"] = {"decoder_strides": [2, 1, 1, 1, 1]}
    rank = {3: 0, 2: 1, 1: 2, 4: 3}  # the study's layers, best first
    assert report_findings._against_the_study("b", "a", summary, specs, rank) == (
        "a (layer 5) below b (layer 1), the study has no model at layer 5"
    )
    assert (
        report_findings._against_the_study("b", "c", summary, specs, rank)
        == "b (layer 1) below c (layer 1), the same layer"
    )
