"""params.yaml -> validated, typed config objects. With pipeline.lib.config_sections, the only modules that know
the YAML keys (the schema); the generic YAML-to-dataclass conversion is pipeline.lib.typed_yaml.

Every error names the offending key (dotted path) and what was expected; unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from pipeline.lib.config_sections import (
    IMAGE_SIZE,
    ClassifierConfig,
    CodecConfig,
    DataConfig,
    EvaluateConfig,
    MlflowConfig,
    RateDistortionConfig,
    StudyConfig,
)
from pipeline.lib.typed_yaml import ConfigError, UniqueKeyLoader, load_dataclass, require, yaml_error

VARIANT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")  # no leading "-": it is a CLI argument
CUDA_DEVICE = re.compile(r"cuda:[0-9]+")

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "linear"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    steps_per_epoch: int | None = None  # None: one full pass over the train split per epoch
    optimizer: Literal["adam", "adamw"] = "adam"
    adam_eps: float = 1e-7  # Keras' default, as in the study, added where Keras adds it (trainer.KerasEpsilon)
    weight_decay: float = 0.0
    schedule: Literal["constant", "onecycle", "cosine"] = "constant"
    # mse: the pooled error. log_mse: the mean over images of log(per-image MSE + 1e-5), i.e. mean per-image PSNR.
    # log_mse_ssim: log_mse + the mean of log(1 - per-image SSIM + 1e-4), SSIM with the study's uniform 11x11 window
    loss: Literal["mse", "log_mse", "log_mse_ssim"] = "mse"
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # auto: bf16 where the device computes it natively
    channels_last: bool = True
    # torch.compile of each batch's forward pass and loss (the backward follows, compiled too): none | default |
    # reduce-overhead (CUDA graphs on a GPU, where a small model's step is bound by kernel launches). Not bit-identical
    # to none, so a setting of its own; the first batches pay the compilation (tens of seconds)
    compile: Literal["none", "default", "reduce-overhead"] = "none"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 = all cores

    def check(self, path: str) -> None:
        require(self.epochs >= 1, f"{path}.epochs", "an integer >= 1", self.epochs)
        require(self.batch_size >= 1, f"{path}.batch_size", "an integer >= 1", self.batch_size)
        require(0 < self.lr < 10 and math.isfinite(self.lr), f"{path}.lr", "a number in (0, 10)", self.lr)
        require(self.adam_eps > 0, f"{path}.adam_eps", "a number > 0", self.adam_eps)
        require(self.weight_decay >= 0, f"{path}.weight_decay", "a number >= 0", self.weight_decay)
        require(self.threads >= 0, f"{path}.threads", "an integer >= 0", self.threads)
        require(
            self.steps_per_epoch is None or self.steps_per_epoch >= 1,
            f"{path}.steps_per_epoch",
            "null or an integer >= 1",
            self.steps_per_epoch,
        )
        ok_device = self.device in ("auto", "cpu", "cuda") or CUDA_DEVICE.fullmatch(self.device) is not None
        require(ok_device, f"{path}.device", "auto, cpu, cuda or cuda:N", self.device)


@dataclass(frozen=True)
class VariantSpec:
    """One autoencoder architecture. Conv layers use 'same' padding: out = ceil(in / stride), or in * stride."""

    encoder_filters: list[int]
    encoder_strides: list[int]
    latent_dim: int
    decoder_filters: list[int]
    decoder_strides: list[int]
    kernel_size: int = 3
    activation: Activation = "relu"
    latent_activation: Activation = "relu"
    output_activation: Literal["sigmoid"] = "sigmoid"
    init: Literal["glorot_uniform", "he_uniform", "torch_default"] = "glorot_uniform"
    # tensorflow: 'same' padding as Keras/TensorFlow align it (the study's); symmetric: PyTorch's usual kernel // 2
    padding: Literal["tensorflow", "symmetric"] = "tensorflow"
    # true: every stride-1 conv whose input and output channels match adds its input back (x + conv(act(x)))
    residual: bool = False
    # normalisation of every hidden conv's output, before its activation (with residual: inside the branch, x +
    # conv(act(norm(x)))): none | batch | group (GroupNorm, gcd(8, channels) groups, independent of the batch)
    norm: Literal["none", "batch", "group"] = "none"
    # > 0: an entropy-coded latent (integers under a learned Laplace prior), trained on MSE + rate_weight * bits/pixel
    rate_weight: float = 0.0
    description: str = ""
    train: dict = field(default_factory=dict)  # per-variant overrides of the train: section

    def check(self, path: str) -> None:
        for key in ("encoder_filters", "decoder_filters", "encoder_strides", "decoder_strides"):
            values = getattr(self, key)
            require(
                len(values) > 0 and all(v >= 1 for v in values),
                f"{path}.{key}",
                "a non-empty list of integers >= 1",
                values,
            )
        require(
            len(self.encoder_strides) == len(self.encoder_filters),
            f"{path}.encoder_strides",
            f"one stride per encoder filter ({len(self.encoder_filters)})",
            self.encoder_strides,
        )
        require(
            len(self.decoder_strides) == len(self.decoder_filters),
            f"{path}.decoder_strides",
            f"one stride per decoder filter ({len(self.decoder_filters)})",
            self.decoder_strides,
        )
        require(self.latent_dim >= 1, f"{path}.latent_dim", "an integer >= 1", self.latent_dim)
        require(0 <= self.rate_weight < math.inf, f"{path}.rate_weight", "a number >= 0", self.rate_weight)
        require(
            self.kernel_size >= 1 and self.kernel_size % 2 == 1,
            f"{path}.kernel_size",
            "an odd integer >= 1",
            self.kernel_size,
        )
        sizes = self.feature_sizes()
        for stride, size in zip(self.encoder_strides, sizes):  # ceil(size / stride) never reaches 0: check each
            require(
                stride <= size,
                f"{path}.encoder_strides",
                f"strides no larger than the feature map they reduce (stride {stride} on {size}x{size})",
                self.encoder_strides,
            )
        size = sizes[-1]
        out = size * math.prod(self.decoder_strides)
        require(
            out == IMAGE_SIZE,
            f"{path}.decoder_strides",
            f"upsampling from {size}x{size} back to {IMAGE_SIZE}x{IMAGE_SIZE} (got {out}x{out})",
            self.decoder_strides,
        )
        load_dataclass(TrainConfig, {**dataclasses.asdict(TrainConfig()), **self.train}, f"{path}.train")

    def feature_sizes(self) -> list[int]:
        """Side of the feature map entering each encoder conv, then of its output ('same' convs: ceil(n / stride))."""
        sizes = [IMAGE_SIZE]
        for stride in self.encoder_strides:
            sizes.append(-(-sizes[-1] // stride))
        return sizes

    def encoded_size(self) -> int:
        return self.feature_sizes()[-1]


@dataclass(frozen=True)
class Params:
    variants: dict[str, VariantSpec]
    seeds: list[int] = field(default_factory=lambda: [0])  # every variant in the matrix is trained once per seed
    matrix: list[str] | None = None  # the variants trained (DVC's train@/evaluate@ matrix); None: every variant
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    rate_distortion: RateDistortionConfig = field(default_factory=RateDistortionConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    def check(self, path: str) -> None:
        require(len(self.variants) > 0, "variants", "at least one variant", self.variants)
        for name in self.variants:
            require(
                VARIANT_NAME.fullmatch(name) is not None,
                f"variants.{name}",
                "a name of letters, digits, '_' or '-' (it becomes a file name)",
                name,
            )
        require(
            len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds) and min(self.seeds) >= 0,
            "seeds",
            "a non-empty list of distinct integers >= 0",
            self.seeds,
        )
        matrix = self.trained()
        require(
            len(matrix) > 0 and len(set(matrix)) == len(matrix), "matrix", "a non-empty list of distinct names", matrix
        )
        for name in matrix:
            require(name in self.variants, "matrix", f"names of variants ({', '.join(self.variants)})", name)
        for name in self.study.models:
            require(name in self.variants, "study.models", "names of variants (the study's architectures)", name)
        for name, spec in self.variants.items():  # the rate term is weighed against MSE, not its log
            loss = self.train_for(name).loss
            require(
                spec.rate_weight == 0 or loss == "mse",
                f"variants.{name}.train.loss",
                "mse for an entropy-coded variant (rate_weight > 0)",
                loss,
            )

    def trained(self) -> list[str]:
        """The variants the pipeline trains, in the matrix's order."""
        return list(self.variants) if self.matrix is None else list(self.matrix)

    def runs(self) -> list[tuple[str, int]]:
        """Every (variant, seed) pair the pipeline trains, in params order."""
        return [(variant, seed) for variant in self.trained() for seed in self.seeds]

    def variant(self, name: str) -> VariantSpec:
        if name not in self.variants:
            raise ConfigError(f"variants.{name}: no such variant; known: {', '.join(sorted(self.variants))}")
        return self.variants[name]

    def train_for(self, name: str) -> TrainConfig:
        """The shared train: section with the variant's own overrides applied (converted and checked)."""
        overrides = self.variant(name).train
        if not overrides:
            return self.train
        return load_dataclass(TrainConfig, {**dataclasses.asdict(self.train), **overrides}, f"variants.{name}.train")

    def compute_for(self, name: str) -> Compute:
        """Where a variant's runs compute (train.device and train.threads, after the variant's overrides): all that
        evaluate and the codec need of train:, read key by key so that they depend on no other train key."""
        overrides = self.variant(name).train
        return Compute(overrides.get("device", self.train.device), overrides.get("threads", self.train.threads))


@dataclass(frozen=True)
class Compute:
    device: str
    threads: int


def run_name(variant: str, seed: int) -> str:
    """The file stem of one training run: models/<run>.pt, reports/metrics/<run>.json, ..."""
    return f"{variant}-seed{seed}"


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become strings so a tracker can log them as params."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value) if isinstance(value, (list, dict)) else value
    return flat


def load_params(path: Path | str) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"{path}: cannot read params file: {reason}") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error(path, err)) from None
    if raw is None:
        raise ConfigError(f"{path}: params file is empty")
    return parse_params(raw)


def parse_params(raw: object) -> Params:
    return load_dataclass(Params, raw, "")
