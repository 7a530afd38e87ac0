"""Bad params, each naming its dotted key in one line: a table of mutations of the tests' own params file, and
load_params on missing, empty, binary and invalid YAML files."""

from __future__ import annotations

import math

import pytest
import yaml

from pipeline.lib.config import ConfigError, load_params, parse_params
from tests.params_support import error_of, valid, write

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
