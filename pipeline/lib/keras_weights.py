"""The study's published Keras models (encoder and decoder .keras files) -> this project's Autoencoder.

A .keras file is a zip whose model.weights.h5 holds each layer's kernel and bias (layers/<name>/vars/0 and 1), named
in layer order. Keras is channels-last: conv kernels are (kh, kw, in, out), transposed-conv kernels (kh, kw, out, in),
and Flatten/Reshape order a 14x14x64 map as (H, W, C) where PyTorch's order is (C, H, W).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from pipeline.lib.config import VariantSpec
from pipeline.lib.io import DataError
from pipeline.lib.models import Autoencoder, build_model

WEIGHTS_MEMBER = "model.weights.h5"


def study_files(model: str) -> tuple[str, str]:
    """The study's published encoder and decoder file names for one of its models (model01 ... model04)."""
    return f"trained_encoder_model_EMNIST_{model}.keras", f"trained_decoder_model_EMNIST_{model}.keras"


def read_keras_weights(path: Path) -> dict[str, tuple[np.ndarray, ...]]:
    """{layer name: (kernel, bias)} from a .keras file, sorted by name (h5 order): conv2d_10 after conv2d_9."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(WEIGHTS_MEMBER)
        with h5py.File(io.BytesIO(data), "r") as h5:
            return {
                name: tuple(np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"])))
                for name, group in sorted(h5["layers"].items(), key=lambda item: name_key(item[0]))
                if len(group["vars"]) > 0
            }
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a Keras model file with {WEIGHTS_MEMBER} ({e})") from e


def name_key(name: str) -> tuple[str, int]:
    """Keras names layers of one kind <kind>, <kind>_1, <kind>_2, ... in the order it creates them."""
    kind, _, number = name.rpartition("_")
    return (kind, int(number)) if number.isdigit() else (name, 0)


KERAS_KINDS = {"dense": nn.Linear, "conv2d": nn.Conv2d, "conv2d_transpose": nn.ConvTranspose2d}


def _keras_kind(module: nn.Module) -> str:
    return next(kind for kind, cls in KERAS_KINDS.items() if isinstance(module, cls))


def keras_names(modules: list[nn.Module], weights: dict) -> list[str]:
    """The Keras layer of each module, in the modules' order: the next unused layer of the module's kind."""
    queues = {kind: [name for name in weights if name_key(name)[0] == kind] for kind in KERAS_KINDS}
    if sorted(map(_keras_kind, modules)) != sorted(name_key(name)[0] for name in weights):
        raise DataError(f"the file has layers {list(weights)}, which do not match the variant's {len(modules)} layers")
    return [queues[_keras_kind(module)].pop(0) for module in modules]


def load_study_model(spec: VariantSpec, encoder_file: Path, decoder_file: Path) -> Autoencoder:
    """The study's trained encoder and decoder as an Autoencoder of `spec` (which must be the study's architecture
    with TensorFlow padding), in eval mode on the CPU."""
    if spec.padding != "tensorflow" or spec.norm != "none" or spec.residual or spec.rate_weight > 0:
        raise DataError("the study's weights need a plain variant with padding: tensorflow")
    model = build_model(spec)
    try:
        copy_keras_weights(model, read_keras_weights(encoder_file), read_keras_weights(decoder_file))
    except DataError as e:
        raise DataError(f"{encoder_file.name}, {decoder_file.name}: {e}") from e
    return model.eval()


def copy_keras_weights(model: Autoencoder, encoder: dict, decoder: dict) -> None:
    """Sets the model's conv and dense layers from Keras {layer name: (kernel, bias)} of its encoder and decoder."""
    _copy(_layers(model.encoder), encoder, model.spec)
    _copy(_layers(model.decoder), decoder, model.spec)


def _layers(stack: nn.Sequential) -> list[nn.Module]:
    return [m for m in stack if isinstance(m, tuple(KERAS_KINDS.values()))]


def _copy(modules: list[nn.Module], weights: dict, spec: VariantSpec) -> None:
    for module, name in zip(modules, keras_names(modules, weights)):
        kernel, bias = weights[name]
        converted = _to_torch(module, kernel, bias, spec)
        for tensor, value in zip((module.weight, module.bias), converted):
            if tuple(tensor.shape) != value.shape:
                raise DataError(f"layer {name} has shape {kernel.shape}, the variant needs {tuple(tensor.shape)}")
            with torch.no_grad():
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _to_torch(module: nn.Module, kernel: np.ndarray, bias: np.ndarray, spec: VariantSpec) -> tuple[np.ndarray, ...]:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):  # (kh, kw, a, b) -> (b, a, kh, kw) for both
        return kernel.transpose(3, 2, 0, 1), bias
    channels, size = spec.encoder_filters[-1], spec.encoded_size()
    if kernel.shape[0] == channels * size * size:  # encoder Dense: its inputs are (H, W, C)-ordered
        hwc = kernel.reshape(size, size, channels, -1)
        return hwc.transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1), bias
    if kernel.shape[-1] == channels * size * size:  # decoder Dense: its outputs are (H, W, C)-ordered
        hwc = kernel.reshape(-1, size, size, channels)
        chw_bias = bias.reshape(size, size, channels).transpose(2, 0, 1).reshape(-1)
        return hwc.transpose(3, 1, 2, 0).reshape(-1, kernel.shape[0]), chw_bias
    return kernel.T, bias
