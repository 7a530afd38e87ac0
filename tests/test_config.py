"""The params.yaml schema (pipeline.lib.config): the repo's file loads, overrides and lookups, the newer sections'
checks, the matrix, and data.source against the project root.

The schema is tested on a params file of its own (tests/params_support.py): nothing here depends on today's values
in the repo's params.yaml, only that it loads.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pipeline import paths
from pipeline.lib.config import (
    Compute,
    ConfigError,
    Params,
    TrainConfig,
    VariantSpec,
    flatten,
    load_params,
    parse_params,
)
from pipeline.lib.config_sections import OFFICIAL_SOURCE
from tests.params_support import BASE_YAML, MINIMAL_VARIANT, REPO_PARAMS, error_of, valid, write

# ---------------------------------------------------------------- the repo's params.yaml


def test_repo_params_load(monkeypatch):
    """The repo's params.yaml (the default params file, at the project root) satisfies the schema in full."""
    monkeypatch.delenv("COMPRESSNET_ROOT", raising=False)
    assert paths.params_file() == REPO_PARAMS
    params = load_params(paths.params_file())
    assert isinstance(params, Params) and params.variants and params.seeds
    assert params.matrix and set(params.matrix) <= set(params.variants)
    assert params.runs() == [(variant, seed) for variant in params.matrix for seed in params.seeds]
    for name, spec in params.variants.items():
        assert isinstance(spec, VariantSpec) and isinstance(params.train_for(name), TrainConfig)
        assert isinstance(params.compute_for(name), Compute)


# ---------------------------------------------------------------- the base file, overrides and lookups


def test_base_loads_with_its_anchor_and_merge_key(tmp_path):
    params = load_params(write(tmp_path, BASE_YAML))
    assert params == parse_params(valid())
    up3, up4 = params.variant("up3"), params.variant("up4")
    assert up4.decoder_strides == [1, 1, 1, 2]  # the merged mapping's own key wins ...
    assert dataclasses.replace(up4, decoder_strides=up3.decoder_strides) == up3  # ... every other key is up3's
    assert (params.train.lr, params.codec.refine_steps, params.mlflow.log_model) == (2e-3, 2, False)
    assert isinstance(params.train.lr, float) and params.train.steps_per_epoch is None  # a default


def test_train_for_applies_only_the_variants_overrides():
    raw = valid()
    shared = parse_params(raw).train
    raw["variants"]["up4"]["train"] = {"epochs": 5, "lr": 2, "schedule": "cosine"}
    params = parse_params(raw)
    assert params.train == shared  # the shared section is not changed by a variant's overrides
    assert params.train_for("up3") == shared  # no overrides: the shared section as is
    own = params.train_for("up4")
    assert isinstance(own, TrainConfig)
    assert (own.epochs, own.lr, own.schedule) == (5, 2.0, "cosine")
    assert isinstance(own.lr, float)  # converted like the shared section (an int in YAML)
    assert dataclasses.replace(own, epochs=shared.epochs, lr=shared.lr, schedule=shared.schedule) == shared
    assert raw["variants"]["up4"]["train"] == {"epochs": 5, "lr": 2, "schedule": "cosine"}


def test_compute_for_reads_device_and_threads_with_the_variants_overrides():
    raw = valid()
    raw["variants"]["up4"]["train"] = {"device": "cuda:1", "threads": 3, "lr": 0.5}
    params = parse_params(raw)
    assert params.compute_for("up3") == Compute(device=params.train.device, threads=params.train.threads)
    assert params.compute_for("up4") == Compute(device="cuda:1", threads=3)
    raw["variants"]["up4"]["train"] = {"threads": 2}
    assert parse_params(raw).compute_for("up4") == Compute(device=params.train.device, threads=2)
    with pytest.raises(ConfigError, match=r"^variants\.nope: no such variant"):
        params.compute_for("nope")


def test_unknown_variant_names_the_known_ones():
    raw = valid()
    raw["variants"]["a-first"] = raw["variants"]["up4"]
    with pytest.raises(ConfigError) as info:
        parse_params(raw).variant("nope")
    assert str(info.value) == "variants.nope: no such variant; known: a-first, up3, up4"  # sorted


def test_mlflow_experiment_is_not_a_param():
    """The experiment is MLflow's own setting (MLFLOW_EXPERIMENT_NAME): in params.yaml it is an unknown key."""
    assert [f.name for f in dataclasses.fields(parse_params(valid()).mlflow)] == ["log_model"]
    raw = valid()
    raw["mlflow"]["experiment"] = "compressnet"
    assert error_of(raw) == "mlflow.experiment: unknown key; allowed: log_model"


def test_flatten():
    tree = {
        "train": {"lr": 0.5, "device": "cpu", "dvc": {"prepare": "abc"}},
        "encoder_filters": [4, 8],
        "empty": {},
        "seed": 3,
    }
    assert flatten(tree) == {
        "train.lr": 0.5,
        "train.device": "cpu",
        "train.dvc.prepare": "abc",
        "encoder_filters": "[4, 8]",
        "empty": "{}",
        "seed": 3,
    }
    assert flatten({"a": {"b": 1}}, "params.") == {"params.a.b": 1}


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        (
            "rate_distortion",
            "jpeg_qualities",
            [5, 101],
            "rate_distortion.jpeg_qualities: expected qualities in [0, 100]",
        ),
        ("rate_distortion", "pca_dims", [0], "rate_distortion.pca_dims: expected dimensions in [1, 784]"),
        ("classifier", "epochs", 0, "classifier.epochs: expected an integer >= 1"),
        ("codec", "refine_steps", -1, "codec.refine_steps: expected an integer >= 0"),
        ("codec", "refine_lr", 0, "codec.refine_lr: expected a number in (0, 10)"),
    ],
)
def test_new_sections_name_the_bad_key(section, key, value, message):
    raw = {"variants": {"m": MINIMAL_VARIANT}, section: {key: value}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_params(raw)


def test_negative_rate_weight_is_an_error():
    raw = {"variants": {"m": {**MINIMAL_VARIANT, "rate_weight": -1}}}
    with pytest.raises(ConfigError, match=re.escape("variants.m.rate_weight: expected a number >= 0")):
        parse_params(raw)


def test_the_matrix_chooses_which_variants_run_and_in_which_order():
    raw = valid()
    assert [v for v, _ in parse_params(raw).runs()] == ["up3", "up3", "up4", "up4"]  # no matrix: every variant
    raw["matrix"] = ["up4"]
    params = parse_params(raw)
    assert params.runs() == [("up4", 0), ("up4", 1)] and params.trained() == ["up4"]
    assert params.variant("up3").latent_dim  # still defined: selectable without editing the variants


# ---------------------------------------------------------------- data.source: resolved against the project root


def test_resolve_source_against_the_project_root(project_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # never against the working directory
    assert paths.resolve_source(OFFICIAL_SOURCE) == project_root / "pipeline" / "emnist_balanced.sha256"
    assert paths.resolve_source("data/emnist") == project_root / "data" / "emnist"
    assert paths.resolve_source("./data/../raw") == project_root / "raw"
    assert paths.resolve_source(str(tmp_path / "abs")) == tmp_path / "abs"
    assert Path(paths.resolve_source("~/x")).is_absolute()
    monkeypatch.delenv("COMPRESSNET_ROOT")
    assert paths.resolve_source("data/emnist") == paths.REPO_ROOT / "data" / "emnist"
