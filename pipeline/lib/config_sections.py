"""The params.yaml sections read by one or two stages each: data, evaluate, codec, classifier, rate_distortion,
study, mlflow. pipeline.lib.config assembles them with train: and the variants into Params.

Every error names the offending key (dotted path) and what was expected; unknown keys are errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pipeline.lib.typed_yaml import require

OFFICIAL_SOURCE = "pipeline/emnist_balanced.sha256"  # the official files' pinned SHA-256s
OFFICIAL_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
STUDY_SOURCE = "github"  # the study's published weights from its repository, at a pinned commit
STUDY_URL = (
    "https://raw.githubusercontent.com/mdhabibi/Neural-Compression-with-Autoencoders/"
    "7dc9d51fe22b1675a8fb621f557de5af1a227557/models"
)
IMAGE_SIZE = 28


@dataclass(frozen=True)
class DataConfig:
    source: str = OFFICIAL_SOURCE  # a directory of IDX files, or a SHA-256 listing of the official files to download
    url: str = OFFICIAL_URL
    val_fraction: float = 0.1
    seed: int = 0

    def check(self, path: str) -> None:
        require(0.0 < self.val_fraction < 1.0, f"{path}.val_fraction", "a number in (0, 1)", self.val_fraction)
        require(
            bool(self.source.strip()),
            f"{path}.source",
            f"a directory or a SHA-256 listing such as {OFFICIAL_SOURCE}",
            self.source,
        )
        require(self.seed >= 0, f"{path}.seed", "an integer >= 0", self.seed)
        renamed = f"{OFFICIAL_SOURCE} (the official download, named by its files' pinned SHA-256s since 2026-12)"
        require(self.source != "emnist-balanced", f"{path}.source", renamed, self.source)


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 256
    protocol_images: int = 10  # the study's protocol: a few random test images ...
    protocol_seed: int = 0  # ... drawn with a fixed seed this time
    ssim_window: Literal["uniform", "gaussian"] = "uniform"
    grid_images: int = 12

    def check(self, path: str) -> None:
        require(self.batch_size >= 1, f"{path}.batch_size", "an integer >= 1", self.batch_size)
        require(self.protocol_images >= 1, f"{path}.protocol_images", "an integer >= 1", self.protocol_images)
        require(self.grid_images >= 1, f"{path}.grid_images", "an integer >= 1", self.grid_images)
        require(self.protocol_seed >= 0, f"{path}.protocol_seed", "an integer >= 0", self.protocol_seed)


@dataclass(frozen=True)
class CodecConfig:
    """Encoder-side search, used by evaluate and `codec compress` alike (never by training): each image's latent
    starts at the encoder's output and moves on its own log MSE through the fixed decoder, inside the uint8 grid.
    refine_method lbfgs: at most refine_steps L-BFGS steps, an image stopping once its next step would move no
    latent dimension by refine_tol grid cells; adam: refine_steps Adam steps at rate refine_lr. refine_steps 0 = the
    encoder's single pass."""

    refine_steps: int = 0
    refine_method: Literal["lbfgs", "adam"] = "lbfgs"
    refine_tol: float = 0.25
    refine_lr: float = 0.5

    def check(self, path: str) -> None:
        require(self.refine_steps >= 0, f"{path}.refine_steps", "an integer >= 0", self.refine_steps)
        for key in ("refine_tol", "refine_lr"):
            value = getattr(self, key)
            require(0 < value < 10 and math.isfinite(value), f"{path}.{key}", "a number in (0, 10)", value)


@dataclass(frozen=True)
class ClassifierConfig:
    """The small CNN that measures semantic fidelity: its test accuracy on originals vs reconstructions."""

    epochs: int = 2
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0

    def check(self, path: str) -> None:
        require(self.epochs >= 1, f"{path}.epochs", "an integer >= 1", self.epochs)
        require(self.batch_size >= 1, f"{path}.batch_size", "an integer >= 1", self.batch_size)
        require(0 < self.lr < 10, f"{path}.lr", "a number in (0, 10)", self.lr)


@dataclass(frozen=True)
class RateDistortionConfig:
    """Classical baselines computed on the same test images as the models."""

    jpeg_qualities: list[int] = field(default_factory=lambda: [5, 10, 20, 30, 50, 75, 90])
    webp_qualities: list[int] = field(default_factory=lambda: [0, 5, 10, 20, 30, 50, 75, 90])
    pca_dims: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])

    def check(self, path: str) -> None:
        for key in ("jpeg_qualities", "webp_qualities"):
            values = getattr(self, key)
            require(all(0 <= q <= 100 for q in values), f"{path}.{key}", "qualities in [0, 100]", values)
        require(
            all(1 <= d <= IMAGE_SIZE**2 for d in self.pca_dims),
            f"{path}.pca_dims",
            f"dimensions in [1, {IMAGE_SIZE**2}]",
            self.pca_dims,
        )


@dataclass(frozen=True)
class StudyConfig:
    """Where the study stage gets the study's published .keras files (always checked against pinned SHA-256s)."""

    source: str = STUDY_SOURCE  # "github" (url below) or a directory holding the files
    url: str = STUDY_URL
    checksums: str = "pipeline/study_weights.sha256"  # the files' pinned SHA-256s (relative: to the project root)
    models: list[str] = field(default_factory=list)  # which variants get the study's weights (study@<model>)

    def check(self, path: str) -> None:
        require(bool(self.source.strip()), f"{path}.source", f"'{STUDY_SOURCE}' or a directory", self.source)


@dataclass(frozen=True)
class MlflowConfig:
    """What the train stage logs besides params and metrics. The experiment is MLflow's own setting
    (MLFLOW_EXPERIMENT_NAME), not a param: renaming it must not retrain anything."""

    log_model: bool = True

    def check(self, path: str) -> None:
        pass
