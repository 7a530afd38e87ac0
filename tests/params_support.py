"""What the params tests share: a complete, valid params file of their own (BASE_YAML, parsed: RAW), fresh copies
of it, a minimal variant, the error a bad one raises, and writing one to a params.yaml. Nothing here depends on
today's values in the repo's params.yaml (REPO_PARAMS)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline import paths
from pipeline.lib.config import ConfigError, parse_params
from pipeline.lib.typed_yaml import UniqueKeyLoader

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
    """A fresh, mutable copy of BASE_YAML (RAW)."""
    return copy.deepcopy(RAW)


def error_of(raw: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    return str(info.value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path
