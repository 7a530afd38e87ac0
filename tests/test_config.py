"""The params.yaml schema (pipeline.lib.config): loading, overrides, and one table of bad params -> dotted key.

The schema is tested on a params file of this module's own (BASE): nothing here depends on today's values in the
repo's params.yaml, only that it loads.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import math
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow.exceptions
import pytest
import sqlalchemy.exc
import yaml

from pipeline import paths, tracking
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
from pipeline.lib.typed_yaml import UniqueKeyLoader
from pipeline.stages import train as train_stage

# A complete, valid params file: two study-like autoencoders (28 -> 14 -> 28), the second by a YAML merge key.
BASE_YAML = """\
seeds: [0, 1]
data: {source: pipeline/emnist_balanced.sha256, val_fraction: 0.2, seed: 7}
train: {epochs: 3, batch_size: 16, lr: 2.0e-3, optimizer: adam, schedule: constant, loss: mse, device: cpu, threads: 1}
evaluate: {batch_size: 64, protocol_images: 4, protocol_seed: 1, ssim_window: gaussian, grid_images: 4}
codec: {refine_steps: 2, refine_lr: 0.1}
classifier: {epochs: 1, batch_size: 32, lr: 1.0e-3, seed: 1}
rate_distortion: {jpeg_qualities: [10, 50], webp_qualities: [10], pca_dims: [8]}
mlflow: {log_model: false}
variants:
  up3: &up3
    encoder_filters: [32, 64, 64, 64]
    encoder_strides: [1, 2, 1, 1]
    latent_dim: 32
    decoder_filters: [64, 64, 64, 32]
    decoder_strides: [1, 1, 2, 1]
  up4:
    <<: *up3
    decoder_strides: [1, 1, 1, 2]
"""
RAW = yaml.load(BASE_YAML, Loader=UniqueKeyLoader)
REPO_PARAMS = paths.REPO_ROOT / "params.yaml"
MINIMAL_VARIANT = {"encoder_filters": [4], "encoder_strides": [2], "latent_dim": 2, "decoder_filters": [4],
                   "decoder_strides": [2]}  # fmt: skip


def valid() -> dict:
    """A fresh, mutable copy of BASE."""
    return copy.deepcopy(RAW)


def error_of(raw: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    return str(info.value)


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


# ---------------------------------------------------------------- the table of bad params


def put(dotted: str, value):
    """Mutation: set raw[a][b][c] = value for dotted 'a.b.c'."""
    *parents, last = dotted.split(".")

    def mutate(raw: dict) -> None:
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def drop(dotted: str):
    *parents, last = dotted.split(".")

    def mutate(raw: dict) -> None:
        node = raw
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


def rename_variant(new: str):
    def mutate(raw: dict) -> None:
        raw["variants"][new] = raw["variants"].pop("up3")

    return mutate


def several(*mutations):
    def mutate(raw: dict) -> None:
        for m in mutations:
            m(raw)

    return mutate


M1, M2 = "variants.up3", "variants.up4"
BAD = [
    # unknown keys, at every level
    ("top-level", put("extras", 1), "extras", "unknown key"),
    (
        "top-level-allowed",
        put("extras", 1),
        "extras",
        "allowed: variants, seeds, matrix, data, train, evaluate, codec, classifier, rate_distortion, mlflow",
    ),
    ("data", put("data.shuffle", True), "data.shuffle", "unknown key"),
    ("train", put("train.momentum", 0.9), "train.momentum", "unknown key"),
    ("evaluate", put("evaluate.metric", "ssim"), "evaluate.metric", "unknown key"),
    ("mlflow", put("mlflow.tracking_uri", "x"), "mlflow.tracking_uri", "unknown key"),
    ("variant", put(f"{M1}.dropout", 0.1), f"{M1}.dropout", "unknown key"),
    ("variant-train", put(f"{M1}.train.momentum", 0.9), f"{M1}.train.momentum", "unknown key"),
    # wrong types
    ("str-epochs", put("train.epochs", "15"), "train.epochs", "expected int, got str"),
    ("float-batch", put("train.batch_size", 128.0), "train.batch_size", "expected int, got float"),
    ("bool-epochs", put("train.epochs", True), "train.epochs", "expected int, got bool"),
    ("bool-latent", put(f"{M1}.latent_dim", False), f"{M1}.latent_dim", "expected int, got bool"),
    ("bool-lr", put("train.lr", True), "train.lr", "expected float, got bool"),
    ("int-for-bool", put("mlflow.log_model", 1), "mlflow.log_model", "expected bool, got int"),
    ("list-source", put("data.source", ["a"]), "data.source", "expected str, got list"),
    ("list-device", put("train.device", ["cpu"]), "train.device", "expected str, got list"),
    ("int-for-list", put(f"{M1}.encoder_filters", 32), f"{M1}.encoder_filters", "expected a list"),
    ("str-in-list", put(f"{M2}.decoder_strides", [1, "2", 1, 1]), f"{M2}.decoder_strides[1]", "expected int"),
    ("yaml-1e-3", put("train.lr", "1e-3"), "train.lr", "write 1.0e-3"),
    ("str-train", put(f"{M1}.train", "fast"), f"{M1}.train", "expected a mapping"),
    ("str-in-train", put(f"{M1}.train.epochs", "3"), f"{M1}.train.epochs", "expected int, got str"),
    ("null-section", put("data", None), "data", "expected a mapping"),
    ("null-variant", put(M1, None), M1, "expected a mapping"),
    # out of range
    *[
        (f"val_fraction={v}", put("data.val_fraction", v), "data.val_fraction", "(0, 1)")
        for v in (0, 1, 1.5, -0.1, math.nan)
    ],
    ("batch-0", put("train.batch_size", 0), "train.batch_size", ">= 1"),
    ("epochs-0", put("train.epochs", 0), "train.epochs", ">= 1"),
    *[(f"lr={v}", put("train.lr", v), "train.lr", "(0, 10)") for v in (0, -1e-3, math.inf, math.nan, 10)],
    ("adam-eps-0", put("train.adam_eps", 0.0), "train.adam_eps", "> 0"),
    ("weight-decay", put("train.weight_decay", -0.1), "train.weight_decay", ">= 0"),
    ("threads", put("train.threads", -1), "train.threads", ">= 0"),
    *[
        (f"device={v}", put("train.device", v), "train.device", "auto, cpu, cuda or cuda:N")
        for v in ("gpu", "cuda:", "cuda:x", "CPU")
    ],
    ("data-seed", put("data.seed", -1), "data.seed", ">= 0"),
    ("train-seed-moved", put("train.seed", 0), "train.seed", "unknown key"),
    ("steps-0", put("train.steps_per_epoch", 0), "train.steps_per_epoch", "null or an integer >= 1"),
    ("steps-str", put("train.steps_per_epoch", "all"), "train.steps_per_epoch", "expected int"),
    ("seeds-empty", put("seeds", []), "seeds", "non-empty list of distinct"),
    ("seeds-repeated", put("seeds", [0, 1, 0]), "seeds", "distinct"),
    ("seeds-negative", put("seeds", [0, -1]), "seeds", ">= 0"),
    ("seeds-not-list", put("seeds", 3), "seeds", "expected a list"),
    ("seeds-str", put("seeds", [0, "1"]), "seeds[1]", "expected int"),
    ("matrix-unknown", put("matrix", ["up3", "up5"]), "matrix", "names of variants (up3, up4)"),
    ("matrix-repeated", put("matrix", ["up3", "up3"]), "matrix", "distinct"),
    ("matrix-empty", put("matrix", []), "matrix", "non-empty list"),
    ("protocol-seed", put("evaluate.protocol_seed", -1), "evaluate.protocol_seed", ">= 0"),
    ("eval-batch", put("evaluate.batch_size", 0), "evaluate.batch_size", ">= 1"),
    ("protocol-images", put("evaluate.protocol_images", 0), "evaluate.protocol_images", ">= 1"),
    ("source", put("data.source", " "), "data.source", "a directory or a SHA-256 listing"),
    ("source-old-name", put("data.source", "emnist-balanced"), "data.source", "named by its files' pinned SHA-256s"),
    ("variant-train-lr", put(f"{M1}.train.lr", 0), f"{M1}.train.lr", "(0, 10)"),
    # bad Literal values
    ("optimizer", put("train.optimizer", "sgd"), "train.optimizer", "one of adam, adamw"),
    ("precision", put("train.precision", "fp16"), "train.precision", "one of auto, fp32, bf16"),
    ("schedule", put("train.schedule", "step"), "train.schedule", "one of constant"),
    ("loss", put("train.loss", "l1"), "train.loss", "one of mse, log_mse, log_mse_ssim"),
    (
        "log-mse-with-rate",
        put(
            "variants.rd",
            {
                "encoder_filters": [8],
                "encoder_strides": [2],
                "latent_dim": 4,
                "decoder_filters": [8],
                "decoder_strides": [2],
                "rate_weight": 0.01,
                "train": {"loss": "log_mse"},
            },
        ),
        "variants.rd.train.loss",
        "mse for an entropy-coded variant",
    ),
    ("ssim-window", put("evaluate.ssim_window", "box"), "evaluate.ssim_window", "one of uniform, gaussian"),
    ("activation", put(f"{M1}.activation", "swish"), f"{M1}.activation", "got 'swish'"),
    ("latent-activation", put(f"{M1}.latent_activation", "foo"), f"{M1}.latent_activation", "linear"),
    ("init", put(f"{M1}.init", "he"), f"{M1}.init", "one of glorot_uniform, he_uniform, torch_default"),
    ("norm", put(f"{M1}.norm", "layer"), f"{M1}.norm", "one of none, batch, group"),
    ("output-activation", put(f"{M1}.output_activation", "relu"), f"{M1}.output_activation", "sigmoid"),
    # impossible architectures
    ("decoder-56", put(f"{M2}.decoder_strides", [2, 2, 1, 1]), f"{M2}.decoder_strides", "(got 56x56)"),
    ("decoder-14", put(f"{M2}.decoder_strides", [1, 1, 1, 1]), f"{M2}.decoder_strides", "(got 14x14)"),
    ("encoder-3", put(f"{M1}.encoder_strides", [1, 3, 1, 1]), f"{M1}.decoder_strides", "from 10x10"),
    ("encoder-64", put(f"{M1}.encoder_strides", [1, 64, 1, 1]), f"{M1}.encoder_strides", "stride 64 on 28x28"),
    ("encoder-4444", put(f"{M1}.encoder_strides", [4, 4, 4, 4]), f"{M1}.encoder_strides", "stride 4 on 2x2"),
    (
        "encoder-past-1x1",
        several(put(f"{M1}.encoder_filters", [8] * 6), put(f"{M1}.encoder_strides", [2] * 6)),
        f"{M1}.encoder_strides",
        "stride 2 on 1x1",
    ),
    ("encoder-stride-0", put(f"{M1}.encoder_strides", [1, 0, 1, 1]), f"{M1}.encoder_strides", "integers >= 1"),
    ("encoder-lengths", put(f"{M1}.encoder_strides", [1, 2, 1]), f"{M1}.encoder_strides", "per encoder filter (4)"),
    ("decoder-lengths", put(f"{M1}.decoder_filters", [64, 32]), f"{M1}.decoder_strides", "per decoder filter (2)"),
    ("negative-filters", put(f"{M1}.encoder_filters", [32, -64, 64, 64]), f"{M1}.encoder_filters", "integers >= 1"),
    ("zero-filters", put(f"{M1}.decoder_filters", [64, 64, 0, 32]), f"{M1}.decoder_filters", "integers >= 1"),
    ("empty-filters", put(f"{M1}.encoder_filters", []), f"{M1}.encoder_filters", "non-empty list"),
    ("latent-0", put(f"{M1}.latent_dim", 0), f"{M1}.latent_dim", ">= 1"),
    ("latent-neg", put(f"{M1}.latent_dim", -8), f"{M1}.latent_dim", ">= 1"),
    ("kernel-even", put(f"{M1}.kernel_size", 4), f"{M1}.kernel_size", "an odd integer"),
    ("kernel-0", put(f"{M1}.kernel_size", 0), f"{M1}.kernel_size", "an odd integer"),
    # the variants mapping itself
    ("name-slash", rename_variant("model/01"), "variants.model/01", "letters, digits"),
    ("name-dot", rename_variant("model.01"), "variants.model.01", "letters, digits"),
    ("name-leading-dash", rename_variant("-model01"), "variants.-model01", "letters, digits"),
    ("no-variants", put("variants", {}), "variants", "at least one variant"),
    ("null-variants", put("variants", None), "variants", "expected a mapping"),
    ("missing-variants", drop("variants"), "variants", "required key is missing"),
    ("missing-latent", drop(f"{M1}.latent_dim"), f"{M1}.latent_dim", "required key is missing"),
    ("missing-strides", drop(f"{M2}.decoder_strides"), f"{M2}.decoder_strides", "required key is missing"),
]


@pytest.mark.parametrize("mutate, key, fragment", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_params_name_the_key(mutate, key, fragment):
    raw = valid()
    mutate(raw)
    message = error_of(raw)
    assert message.split(": ", 1)[0] == key, message  # every message starts with the full dotted key
    assert fragment in message, message
    assert "\n" not in message


def test_bad_params_table_ids_are_unique():
    ids = [row[0] for row in BAD]
    assert len(ids) == len(set(ids))


def test_non_mapping_and_non_string_keys():
    assert error_of([1, 2]).startswith("params.yaml: expected a mapping")
    raw = valid()
    raw[1], raw["zz"] = "a", "b"  # mixed key types must not crash the unknown-key report
    assert error_of(raw).startswith("1: unknown key")


def test_valid_variants_accepted():
    """Sanity for the table: the same checks let real alternatives through."""
    raw = valid()
    raw["variants"] = {
        "tiny_1-b": {
            "encoder_filters": [4, 8],
            "encoder_strides": [2, 2],
            "latent_dim": 8,
            "decoder_filters": [8, 4],
            "decoder_strides": [2, 2],
            "kernel_size": 5,
            "latent_activation": "linear",
            "train": {"lr": 3.0e-3, "device": "cuda:1"},
        }
    }
    raw["train"]["device"] = "cuda:0"
    params = parse_params(raw)
    assert params.variant("tiny_1-b").encoded_size() == 7
    assert params.train_for("tiny_1-b").device == "cuda:1"


# ---------------------------------------------------------------- load_params on bad files


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == f"{path}: params file not found"


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("data:\n  seed: 1\ntrain: [1, 2\nevaluate: {}\n", 4, "expected ',' or ']'"),
        ("data:\n  seed: 1\n   bad: 2\n", 3, "mapping values are not allowed here"),
        ("train:\n\tepochs: 3\n", 2, "cannot start any token"),
        ("variants:\n  model01: {}\n  model01: {}\n", 3, "duplicate key 'model01'"),
    ],
    ids=["unclosed-list", "bad-indent", "tab", "duplicate-key"],
)
def test_invalid_yaml_is_one_line_naming_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}:{line}:"), message
    assert "not valid YAML" in message and fragment in message, message


def test_empty_directory_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="params file is empty"):
        load_params(write(tmp_path, "# nothing\n"))
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_params(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_params(binary)


def test_bad_value_in_a_file_names_the_key(tmp_path):
    raw = valid()
    raw["variants"]["up4"]["decoder_strides"] = [2, 2, 1, 1]
    path = write(tmp_path, yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=r"^variants\.up4\.decoder_strides: expected upsampling from 14x14"):
        load_params(path)


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


# ---------------------------------------------------------------- the stage CLI: python -m pipeline.stages.train


@pytest.fixture
def no_training(monkeypatch) -> list:
    """The train stage's work replaced by a recorder (and MLflow by the no-op tracker): the CLI alone is tested."""
    calls = []

    def train(params, variant, seed, tracker):
        calls.append((variant, seed))
        return f"trained {variant} seed {seed}"

    monkeypatch.setattr(tracking, "MlflowTracker", tracking.NoOpTracker)
    monkeypatch.setattr(train_stage, "train", train)
    return calls


def test_train_cli_rejects_bad_params_before_training(project_root, no_training, capsys):
    raw = valid()
    raw["train"]["epochs"] = 0
    write(project_root, yaml.safe_dump(raw, sort_keys=False))  # the default params file: <root>/params.yaml
    assert train_stage.main(["up3", "--seed", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "train: error: train.epochs: expected an integer >= 1, got 0\n"
    assert no_training == [] and [p.name for p in project_root.iterdir()] == ["params.yaml"]  # nothing written


def test_train_cli_unknown_variant_is_one_line(tmp_path, no_training, capsys):
    path = write(tmp_path, BASE_YAML)
    assert train_stage.main(["nope", "--seed", "0", "--params", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "train: error: variants.nope: no such variant; known: up3, up4\n"
    assert no_training == []


FULL_DISK = OSError(errno.ENOSPC, "No space left on device", "/x/models/up3-seed0.pt")


def full_store() -> Exception:
    """What MLflow's sqlite store raises on a full disk: its exception, caused by SQLAlchemy's, caused by sqlite's."""
    driver = sqlite3.OperationalError("database or disk is full")
    try:
        try:
            raise sqlalchemy.exc.OperationalError("(autoflush advice)\nINSERT INTO runs", {}, driver)
        except sqlalchemy.exc.OperationalError as err:
            raise mlflow.exceptions.MlflowException(str(err)) from err
    except mlflow.exceptions.MlflowException as err:
        return err


@pytest.mark.parametrize(
    "error, line",
    [
        (FULL_DISK, "train: error: /x/models/up3-seed0.pt: No space left on device\n"),
        (full_store(), "train: error: database or disk is full\n"),
    ],
    ids=["disk", "store"],
)
def test_train_cli_turns_a_full_disk_or_store_into_one_line(tmp_path, monkeypatch, capsys, error, line):
    def train(params, variant, seed, tracker):
        raise error

    monkeypatch.setattr(tracking, "MlflowTracker", tracking.NoOpTracker)
    monkeypatch.setattr(train_stage, "train", train)
    assert train_stage.main(["up3", "--seed", "0", "--params", str(write(tmp_path, BASE_YAML))]) == 1
    assert capsys.readouterr().err == line


def test_train_cli_requires_a_seed_and_takes_any(tmp_path, no_training, capsys):
    path = write(tmp_path, BASE_YAML)
    with pytest.raises(SystemExit) as exit_:
        train_stage.main(["up3", "--params", str(path)])
    assert exit_.value.code == 2 and "the following arguments are required: --seed" in capsys.readouterr().err
    assert no_training == []
    assert train_stage.main(["up4", "--seed", "9", "--params", str(path)]) == 0  # 9 is not in seeds: [0, 1]
    assert no_training == [("up4", 9)] and capsys.readouterr().out == "train: trained up4 seed 9\n"


@pytest.mark.slow  # a Python that imports torch and MLflow: seconds; the tests above cover the same CLI in-process
def test_train_cli_as_a_module_rejects_bad_params(tmp_path):
    """`python -m pipeline.stages.train` as dvc.yaml runs it: exit status 1, one line, nothing written."""
    root = tmp_path / "project"
    root.mkdir()
    raw = valid()
    raw["variants"]["up3"]["latent_dim"] = 0
    write(root, yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "COMPRESSNET_ROOT": str(root)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.train", "up3", "--seed", "0"],
        cwd=paths.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert result.stderr == "train: error: variants.up3.latent_dim: expected an integer >= 1, got 0\n"
    assert [p.name for p in root.iterdir()] == ["params.yaml"]


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
