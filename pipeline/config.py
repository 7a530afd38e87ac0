"""params.yaml -> validated, typed config objects. The only module that knows the YAML keys.

Every error names the offending key (dotted path) and what was expected; unknown keys are errors.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO_ROOT / "params.yaml"
OFFICIAL_SOURCE = "emnist-balanced"
OFFICIAL_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
IMAGE_SIZE = 28
VARIANT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")  # no leading "-": it is a CLI argument
CUDA_DEVICE = re.compile(r"cuda:[0-9]+")

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "linear"]


class ConfigError(ValueError):
    """params.yaml does not satisfy the schema; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    source: str = OFFICIAL_SOURCE  # "emnist-balanced" or a directory of IDX files
    url: str = OFFICIAL_URL
    val_fraction: float = 0.1
    seed: int = 0

    def check(self, path: str) -> None:
        _require(0.0 < self.val_fraction < 1.0, f"{path}.val_fraction", "a number in (0, 1)", self.val_fraction)
        _require(bool(self.source.strip()), f"{path}.source", f"'{OFFICIAL_SOURCE}' or a directory", self.source)
        _require(self.seed >= 0, f"{path}.seed", "an integer >= 0", self.seed)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    steps_per_epoch: int | None = None  # None: one full pass over the train split per epoch
    optimizer: Literal["adam", "adamw"] = "adam"
    adam_eps: float = 1e-7  # Keras' default, as in the study
    weight_decay: float = 0.0
    schedule: Literal["constant", "onecycle", "cosine"] = "constant"
    # mse: the pooled error. log_mse: the mean over images of log(per-image MSE + 1e-5), i.e. mean per-image PSNR
    loss: Literal["mse", "log_mse"] = "mse"
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # auto: bf16 where the device computes it natively
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 = all cores

    def check(self, path: str) -> None:
        _require(self.epochs >= 1, f"{path}.epochs", "an integer >= 1", self.epochs)
        _require(self.batch_size >= 1, f"{path}.batch_size", "an integer >= 1", self.batch_size)
        _require(0 < self.lr < 10 and math.isfinite(self.lr), f"{path}.lr", "a number in (0, 10)", self.lr)
        _require(self.adam_eps > 0, f"{path}.adam_eps", "a number > 0", self.adam_eps)
        _require(self.weight_decay >= 0, f"{path}.weight_decay", "a number >= 0", self.weight_decay)
        _require(self.threads >= 0, f"{path}.threads", "an integer >= 0", self.threads)
        _require(self.steps_per_epoch is None or self.steps_per_epoch >= 1, f"{path}.steps_per_epoch",
                 "null or an integer >= 1", self.steps_per_epoch)
        ok_device = self.device in ("auto", "cpu", "cuda") or CUDA_DEVICE.fullmatch(self.device) is not None
        _require(ok_device, f"{path}.device", "auto, cpu, cuda or cuda:N", self.device)


@dataclass(frozen=True)
class VariantSpec:
    """One autoencoder architecture. Conv layers use 'same' padding (kernel_size // 2)."""

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
    # true: every stride-1 conv whose input and output channels match adds its input back (x + conv(act(x)))
    residual: bool = False
    # normalisation after every hidden conv (before its activation): none | batch | group (8 groups, batch-size free)
    norm: Literal["none", "batch", "group"] = "none"
    # > 0: an entropy-coded latent (integers under a learned Laplace prior), trained on MSE + rate_weight * bits/pixel
    rate_weight: float = 0.0
    description: str = ""
    train: dict = field(default_factory=dict)  # per-variant overrides of the train: section

    def check(self, path: str) -> None:
        for key in ("encoder_filters", "decoder_filters", "encoder_strides", "decoder_strides"):
            values = getattr(self, key)
            _require(len(values) > 0 and all(v >= 1 for v in values), f"{path}.{key}",
                     "a non-empty list of integers >= 1", values)
        _require(len(self.encoder_strides) == len(self.encoder_filters), f"{path}.encoder_strides",
                 f"one stride per encoder filter ({len(self.encoder_filters)})", self.encoder_strides)
        _require(len(self.decoder_strides) == len(self.decoder_filters), f"{path}.decoder_strides",
                 f"one stride per decoder filter ({len(self.decoder_filters)})", self.decoder_strides)
        _require(self.latent_dim >= 1, f"{path}.latent_dim", "an integer >= 1", self.latent_dim)
        _require(0 <= self.rate_weight < math.inf, f"{path}.rate_weight", "a number >= 0", self.rate_weight)
        _require(self.kernel_size >= 1 and self.kernel_size % 2 == 1, f"{path}.kernel_size",
                 "an odd integer >= 1", self.kernel_size)
        sizes = self.feature_sizes()
        for stride, size in zip(self.encoder_strides, sizes):  # ceil(size / stride) never reaches 0: check each
            _require(stride <= size, f"{path}.encoder_strides",
                     f"strides no larger than the feature map they reduce (stride {stride} on {size}x{size})",
                     self.encoder_strides)
        size = sizes[-1]
        out = size * math.prod(self.decoder_strides)
        _require(out == IMAGE_SIZE, f"{path}.decoder_strides",
                 f"upsampling from {size}x{size} back to {IMAGE_SIZE}x{IMAGE_SIZE} (got {out}x{out})",
                 self.decoder_strides)
        _load_dataclass(TrainConfig, {**dataclasses.asdict(TrainConfig()), **self.train}, f"{path}.train")

    def feature_sizes(self) -> list[int]:
        """Side of the feature map entering each encoder conv, then of its output: 'same' convs give ceil(n / stride)."""
        sizes = [IMAGE_SIZE]
        for stride in self.encoder_strides:
            sizes.append(-(-sizes[-1] // stride))
        return sizes

    def encoded_size(self) -> int:
        return self.feature_sizes()[-1]


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 2048
    protocol_images: int = 10  # the study's protocol: a few random test images ...
    protocol_seed: int = 0  # ... drawn with a fixed seed this time
    ssim_window: Literal["uniform", "gaussian"] = "uniform"
    grid_images: int = 12

    def check(self, path: str) -> None:
        _require(self.batch_size >= 1, f"{path}.batch_size", "an integer >= 1", self.batch_size)
        _require(self.protocol_images >= 1, f"{path}.protocol_images", "an integer >= 1", self.protocol_images)
        _require(self.grid_images >= 1, f"{path}.grid_images", "an integer >= 1", self.grid_images)
        _require(self.protocol_seed >= 0, f"{path}.protocol_seed", "an integer >= 0", self.protocol_seed)


@dataclass(frozen=True)
class ClassifierConfig:
    """The small CNN that measures semantic fidelity: its test accuracy on originals vs reconstructions."""
    epochs: int = 2
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0

    def check(self, path: str) -> None:
        _require(self.epochs >= 1, f"{path}.epochs", "an integer >= 1", self.epochs)
        _require(self.batch_size >= 1, f"{path}.batch_size", "an integer >= 1", self.batch_size)
        _require(0 < self.lr < 10, f"{path}.lr", "a number in (0, 10)", self.lr)


@dataclass(frozen=True)
class RateDistortionConfig:
    """Classical baselines computed on the same test images as the models."""
    jpeg_qualities: list[int] = field(default_factory=lambda: [5, 10, 20, 30, 50, 75, 90])
    webp_qualities: list[int] = field(default_factory=lambda: [0, 5, 10, 20, 30, 50, 75, 90])
    pca_dims: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])

    def check(self, path: str) -> None:
        for key in ("jpeg_qualities", "webp_qualities"):
            values = getattr(self, key)
            _require(all(0 <= q <= 100 for q in values), f"{path}.{key}", "qualities in [0, 100]", values)
        _require(all(1 <= d <= IMAGE_SIZE ** 2 for d in self.pca_dims), f"{path}.pca_dims",
                 f"dimensions in [1, {IMAGE_SIZE ** 2}]", self.pca_dims)


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "compressnet"
    log_model: bool = True

    def check(self, path: str) -> None:
        _require(bool(self.experiment.strip()), f"{path}.experiment", "a non-empty name", self.experiment)


@dataclass(frozen=True)
class Params:
    variants: dict[str, VariantSpec]
    seeds: list[int] = field(default_factory=lambda: [0])  # every variant is trained once per seed
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    rate_distortion: RateDistortionConfig = field(default_factory=RateDistortionConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def check(self, path: str) -> None:
        _require(len(self.variants) > 0, "variants", "at least one variant", self.variants)
        for name in self.variants:
            _require(VARIANT_NAME.fullmatch(name) is not None, f"variants.{name}",
                     "a name of letters, digits, '_' or '-' (it becomes a file name)", name)
        _require(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds) and min(self.seeds) >= 0,
                 "seeds", "a non-empty list of distinct integers >= 0", self.seeds)

    def runs(self) -> list[tuple[str, int]]:
        """Every (variant, seed) pair the pipeline trains, in params order."""
        return [(variant, seed) for variant in self.variants for seed in self.seeds]

    def variant(self, name: str) -> VariantSpec:
        if name not in self.variants:
            raise ConfigError(f"variants.{name}: no such variant; known: {', '.join(sorted(self.variants))}")
        return self.variants[name]

    def train_for(self, name: str) -> TrainConfig:
        """The shared train: section with the variant's own overrides applied (converted and checked)."""
        overrides = self.variant(name).train
        if not overrides:
            return self.train
        return _load_dataclass(TrainConfig, {**dataclasses.asdict(self.train), **overrides}, f"variants.{name}.train")


def run_name(variant: str, seed: int) -> str:
    """The file stem of one training run: models/<run>.pt, reports/metrics/<run>.json, ..."""
    return f"{variant}-seed{seed}"


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"{path}: cannot read params file: {reason}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from None
    if raw is None:
        raise ConfigError(f"{path}: params file is empty")
    return parse_params(raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice in one mapping (a copied variant would silently replace one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """One line: file, line and column (1-based), and the problem, instead of PyYAML's multi-line dump."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: not valid YAML: {' '.join(detail.split())}"


def parse_params(raw: object) -> Params:
    return _load_dataclass(Params, raw, "")


def resolve_source(source: str) -> str | Path:
    """The official dataset name, or the local directory as an absolute path (relative to the repo root)."""
    if source == OFFICIAL_SOURCE:
        return source
    path = Path(source).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def _require(ok: bool, key: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def _load_dataclass(cls, raw: object, path: str):
    where = path or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)  # YAML keys need not be strings
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown key; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, fld in fields.items():
        key = _join(path, name)
        if name in raw:
            values[name] = _convert(hints[name], raw[name], key)
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    obj = cls(**values)
    obj.check(where)
    return obj


def _convert(tp, value, key: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _load_dataclass(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {str(k): _convert(args[1], v, _join(key, str(k))) for k, v in value.items()}
    return _scalar(tp, value, key)


def _scalar(tp, value, key: str):
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        hint = ""
        if tp is float and isinstance(value, str) and _parses_as_float(value):
            hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}{hint}")
    return value


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


__all__ = [
    "ConfigError", "DataConfig", "TrainConfig", "VariantSpec", "EvaluateConfig", "ClassifierConfig", "RateDistortionConfig",
    "MlflowConfig", "Params",
    "load_params", "parse_params", "resolve_source", "run_name", "REPO_ROOT", "OFFICIAL_SOURCE",
]
