"""The rate-distortion table (pipeline.lib.rate_distortion: the variants' points per storage form beside the
baselines', the quality target) and its figure (pipeline.lib.figures), on made-up means."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.lib import rate_distortion


def _means(**variants) -> pd.DataFrame:
    keys = [
        "latent_dim",
        "psnr_pooled",
        "psnr",
        "ssim",
        "mse",
        "classifier_accuracy",
        "bytes_per_image_uint8",
        "psnr_pooled_uint8",
        "psnr_uint8",
        "ssim_uint8",
        "mse_uint8",
        "bytes_per_image_entropy",
        "bytes_per_image_entropy_standalone",
        "bytes_per_image_uint8_range",
    ]
    return pd.DataFrame({name: dict(zip(keys, values)) for name, values in variants.items()}).T


def test_variant_rows_give_one_point_per_storage_form():
    means = _means(
        plain=[32, 24.0, 25.0, 0.97, 0.004, 0.8, 32.1, 23.9, 24.9, 0.969, 0.0041, np.nan, np.nan],
        coded=[16, 22.0, 23.0, 0.95, 0.006, 0.7, 16.1, 21.0, 22.0, 0.94, 0.008, 9.5, 40.5, 14.0],
    )
    table = rate_distortion.assemble(
        means,
        [
            {
                "method": "webp",
                "setting": "quality 5",
                "bytes_per_image": 135.0,
                "psnr_pooled": 27.1,
                "psnr": 28.0,
                "ssim": 0.98,
                "mse": 0.002,
            }
        ],
    )
    forms = {(r.method, r.setting): r.bytes_per_image for r in table.itertuples()}
    assert forms == {
        ("plain", "float32, 32 dims"): 128.0,
        ("plain", "uint8, 32 dims"): 32.1,
        ("coded", "uint8, 16 dims"): 16.1,
        ("coded", "uint8 range-coded, 16 dims"): 14.0,
        ("coded", "entropy-coded, 16 dims"): 9.5,
        ("coded", "entropy-coded one file per image, 16 dims"): 40.5,
        ("webp", "quality 5"): 135.0,
    }
    assert list(table.kind) == ["variant"] * 6 + ["baseline"]
    range_coded = table.set_index(["method", "setting"]).loc[("coded", "uint8 range-coded, 16 dims")]
    assert (range_coded.psnr_pooled, range_coded.ssim) == (21.0, 0.94)  # the uint8 codes, so the uint8 quality
    finding = rate_distortion.moonshot_finding(table)
    assert "not met (5.10 dB short)" in finding and "coded entropy-coded, 16 dims at 9.5 B/image" in finding
    assert "here WebP quality 5 measures 27.10 dB at 135.0 B)" in finding
    only_plain = rate_distortion.moonshot_finding(table[table.method != "coded"])  # every point above 32 bytes
    assert (
        "not met; no variant stores an image in ≤ 32 bytes (the smallest point is plain uint8, 32 dims at "
        "32.10 B/image, 23.90 dB pooled)"
    ) in only_plain


def test_quality_target_counts_only_32_dim_variants_within_model01s_flops():
    keys = ["latent_dim", "train_flops_per_image", "psnr", "ssim"]
    means = pd.DataFrame(
        {
            "small": dict(zip(keys, [32, 300e6, 25.5, 0.976])),
            "costly": dict(zip(keys, [32, 400e6, 28.0, 0.990])),  # better, but over the budget
            "wide": dict(zip(keys, [64, 300e6, 29.0, 0.992])),
        }
    ).T  # better, but not 32 numbers
    [finding] = rate_distortion.quality_target_findings(means, budget_flops=332e6)  # no refined latents: one line
    assert "not met (1.50 dB, 0.0090 SSIM short)" in finding and "the best is small at 25.50 dB" in finding
    means.loc["costly", "train_flops_per_image"] = 332e6  # exactly model01's budget is allowed
    assert (
        "met; the best is costly at 28.00 dB" in rate_distortion.quality_target_findings(means, budget_flops=332e6)[0]
    )
    assert "no variant here" in rate_distortion.quality_target_findings(means.loc[["wide"]], budget_flops=332e6)[0]


def test_quality_target_is_answered_again_for_refined_latents():
    keys = ["latent_dim", "train_flops_per_image", "psnr", "ssim", "refine_steps", "psnr_refined", "ssim_refined"]
    means = pd.DataFrame(
        {
            "single": dict(zip(keys, [32, 300e6, 26.6, 0.981, 0, np.nan, np.nan])),
            "refined": dict(zip(keys, [32, 300e6, 26.5, 0.980, 100, 28.4, 0.987])),
        }
    ).T
    one_pass, refined = rate_distortion.quality_target_findings(means, budget_flops=332e6)
    assert "in one encoder pass" in one_pass and "not met" in one_pass and "the best is single at 26.60 dB" in one_pass
    assert "with the codec's encode-time latent refinement" in refined
    assert (
        "met; the best is refined at 28.40 dB, SSIM 0.9870" in refined
        and "up to 100 refinement steps per image" in refined
    )


def test_quality_target_names_a_variant_that_meets_both_over_one_with_a_higher_psnr_alone():
    keys = ["latent_dim", "train_flops_per_image", "psnr", "ssim"]
    means = pd.DataFrame(
        {
            "sharp": dict(zip(keys, [32, 300e6, 27.5, 0.980])),  # the higher PSNR, short on SSIM
            "balanced": dict(zip(keys, [32, 300e6, 27.1, 0.986])),
        }
    ).T
    [finding] = rate_distortion.quality_target_findings(means, budget_flops=332e6)
    assert ": met; the best is balanced at 27.10 dB" in finding
    [finding] = rate_distortion.quality_target_findings(means.loc[["sharp"]], budget_flops=332e6)
    assert "not met (0.0050 SSIM short)" in finding  # the PSNR passes, so no "0.00 dB short" beside it


def test_a_variant_whose_seeds_lack_a_value_is_named_not_passed_over_in_silence():
    keys = ["latent_dim", "train_flops_per_image", "psnr", "ssim"]
    means = pd.DataFrame(
        {"known": dict(zip(keys, [32, 300e6, 26.0, 0.98])), "partial": dict(zip(keys, [32, 300e6, np.nan, 0.99]))}
    ).T
    [finding] = rate_distortion.quality_target_findings(means, budget_flops=332e6)
    assert "the best is known at 26.00 dB" in finding and "(not counted, a seed lacking the value: partial)" in finding
    [alone] = rate_distortion.quality_target_findings(means.loc[["partial"]], budget_flops=332e6)
    assert "no variant with a 32-dim latent within that budget has its values from every seed (partial)." in alone
