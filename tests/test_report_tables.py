"""The report's compression table and encoder -> decoder section show what the variants measured, not columns
nobody fills or the autoencoder's numbers a second time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml

from pipeline import paths
from pipeline.lib import report_tables, report_text
from tests.conftest import REPO

PLAIN = {
    "latent_dim": 32,
    "bytes_per_image_uint8": 32.0,
    "max_abs_diff_decoder": 0.0,
    "refine_steps": 0,
    "refine_seconds": 1e-5,
}


def test_the_compression_table_leaves_out_what_no_variant_measured():
    means = pd.DataFrame({"a": PLAIN, "b": PLAIN}).T.assign(bytes_per_image_entropy=np.nan, psnr_refined=np.nan)
    assert report_tables.compression_table(means).columns.tolist() == [
        "latent_dim",
        "bytes_per_image_uint8",
        "max_abs_diff_decoder",
    ]
    means.loc["b", ["bytes_per_image_entropy", "refine_steps", "psnr_refined"]] = [20.0, 100, 27.0]
    table = report_tables.compression_table(means)
    assert {"bytes_per_image_entropy", "refine_steps", "refine_seconds", "psnr_refined"} <= set(table.columns)
    assert pd.isna(table.loc["a", "bytes_per_image_entropy"])  # a variant without it shows a blank, not a zero


def test_the_decoder_section_is_a_sentence_where_the_passes_agree_to_the_bit_and_a_table_where_they_do_not():
    decoder = {"mse_decoder": 0.004, "psnr_decoder": 25.0, "ssim_decoder": 0.97, "max_abs_diff_decoder": 0.0}
    means = pd.DataFrame({"a": decoder, "b": decoder}).T
    (sentence,) = report_text.decoder_section(means)
    assert "to the bit" in sentence and not sentence.startswith("|")
    means.loc["b", "max_abs_diff_decoder"] = 1e-6
    (table,) = report_text.decoder_section(means)
    assert table.startswith("|") and "1e-06" in table


def test_the_recipe_table_has_a_row_per_recipe_naming_the_variants_that_share_it():
    ours = dict(zip(report_tables.RECIPE_KEYS, [15, None, 128, "adamw", 3e-3, 1e-7, "onecycle", 1e-4, "mse", "auto"]))
    study = {**ours, "optimizer": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0, "precision": "fp32"}
    table = report_tables.recipe_table({"a": ours, "b": {**ours, "loss": "log_mse"}, "c": ours, "the study": study})
    assert table.variants.tolist() == ["a, c", "b", "the study"]
    assert table.loss.tolist() == ["mse", "log_mse", "mse"] and table.lr.tolist() == [3e-3, 3e-3, 1e-3]
    assert report_tables.recipe_table({"a": study, "the study": study}).variants.tolist() == ["a, the study"]


def test_the_data_line_says_whether_the_runs_measured_the_official_emnist_balanced_or_a_stand_in():
    pinned = {"emnist-balanced-train-images-idx3-ubyte.gz": "a1", "emnist-balanced-test-images-idx3-ubyte.gz": "b2"}
    counts = {"train": 90, "val": 10, "test": 47}
    official = {"source": "pipeline/emnist_balanced.sha256", "inputs": {"x.gz": "a1", "y.gz": "b2"}, "counts": counts}
    line = report_text.data_line(official, pinned)
    assert line.startswith("Data: pipeline/emnist_balanced.sha256, the official EMNIST-Balanced files")
    assert line.endswith("; 90 train, 10 val, 47 test images.")
    stand_in = {**official, "source": "../shared/data/resplit", "inputs": {"x.gz": "a1", "y.gz": "c3"}}
    assert "not the official EMNIST-Balanced files" in report_text.data_line(stand_in, pinned)


def test_the_studys_recipe_in_reference_yaml_is_the_one_make_repro_study_recipe_trains_with():
    reference = yaml.safe_load(paths.REFERENCE_FILE.read_text())
    profile = yaml.safe_load((paths.REFERENCE_FILE.parent / "study_recipe.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    trained = {**params, **{key.removeprefix("train."): v for key, v in profile.items() if key.startswith("train.")}}
    recipe = {"epochs": reference["epochs"], **reference["recipe"]}
    assert sorted(recipe) == sorted(report_tables.RECIPE_KEYS)
    assert {key: trained[key] for key in report_tables.RECIPE_KEYS} == recipe


def test_the_recipe_notes_explain_only_the_cells_the_table_has():
    reference = yaml.safe_load(paths.REFERENCE_FILE.read_text())
    ours = {**reference["recipe"], "epochs": 15, "precision": "auto"}
    (note,) = [
        line for line in report_text.recipe_section({"a": ours}, reference) if line.startswith(("steps", "prec"))
    ]
    assert note.startswith("steps_per_epoch –") and "precision auto" in note
    fixed = {**ours, "steps_per_epoch": 100, "precision": "fp32"}
    lines = report_text.recipe_section(
        {"a": fixed}, {**reference, "recipe": {**reference["recipe"], "steps_per_epoch": 5}}
    )
    assert not [line for line in lines if "precision auto" in line or "steps_per_epoch –" in line]


def test_the_protocol_table_says_how_far_its_few_images_read_from_the_whole_split():
    protocol = [{"indices": [3, 9], "psnr": psnr} for psnr in (26.0, 27.5, 25.0)]
    results = pd.DataFrame({"psnr": [25.0, 26.0, 25.5], "seed_protocol": protocol})
    sentence = report_tables.protocol_offset(results)
    assert sentence.startswith("On these 2 images a run's per-image PSNR differs from its whole test split's by")
    assert "by -0.50 to +1.50 dB (mean +0.67 dB)" in sentence


def test_a_column_with_one_value_in_every_row_is_said_once_under_its_table():
    table = pd.DataFrame(
        {
            "variant": ["a", "a"],
            "seed": [0, 0],  # names the row: kept even where constant
            "epochs": [15, 15],
            "mse": [0.004, 0.005],
            "gap": [np.nan, np.nan],
            "flops": [1234567890, 1234567890],  # an int beside floats: said with every digit, as its cells are
        }
    )
    text = report_tables.markdown_varying(table, index=False)
    header = text.splitlines()[0]
    assert "variant" in header and "seed" in header and "mse" in header  # naming a row, or varying: kept
    assert "epochs" not in header and "gap" not in header and "flops" not in header
    assert text.endswith("\n\nIn every row: epochs 15; gap –; flops 1234567890.")
    one_row = table.head(1)
    assert report_tables.markdown_varying(one_row, index=False) == report_tables.markdown_table(one_row, False)
