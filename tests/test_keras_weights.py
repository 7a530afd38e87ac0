"""The port is the study's model: its weights load, its padding aligns like TensorFlow's, its Adam steps like Keras'."""

from __future__ import annotations

import copy
import dataclasses
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.lib.config import VariantSpec, load_params
from pipeline.lib.io import DataError
from pipeline.lib.keras_weights import load_study_model, study_files
from pipeline.lib.models import SameConv2d, SameConvTranspose2d, build_model
from pipeline.lib.trainer import KerasAdam
from tests.conftest import REPO
from tests.fakedata import keras_layout, write_keras_file

STUDY_WEIGHTS = REPO.parent / "shared" / "reference" / "study-weights"
GOLDEN = REPO / "tests" / "expected" / "study_keras_forward.npz"
SMALL_STUDY_LIKE = VariantSpec(
    encoder_filters=[4, 8, 8], encoder_strides=[1, 2, 1], latent_dim=6, decoder_filters=[8, 4], decoder_strides=[2, 1]
)


def write_model(tmp_path: Path, model, name: str = "model01") -> tuple[Path, Path]:
    encoder, decoder = keras_layout(model)
    paths = [tmp_path / file for file in study_files(name)]
    write_keras_file(paths[0], encoder)
    write_keras_file(paths[1], decoder)
    return paths[0], paths[1]


def test_keras_files_load_into_the_port_layer_for_layer(tmp_path):
    torch.manual_seed(0)
    original = build_model(SMALL_STUDY_LIKE).eval()
    loaded = load_study_model(SMALL_STUDY_LIKE, *write_model(tmp_path, original))
    for key, value in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)


def test_weights_of_another_architecture_are_refused_by_name(tmp_path):
    torch.manual_seed(0)
    files = write_model(tmp_path, build_model(SMALL_STUDY_LIKE))
    wider = dataclasses.replace(SMALL_STUDY_LIKE, encoder_filters=[4, 16, 8])
    with pytest.raises(DataError, match="conv2d_1 has shape"):
        load_study_model(wider, *files)
    deeper = dataclasses.replace(SMALL_STUDY_LIKE, decoder_filters=[8, 4, 4], decoder_strides=[2, 1, 1])
    with pytest.raises(DataError, match="do not match"):
        load_study_model(deeper, *files)


def test_a_file_that_is_not_a_keras_model_is_a_clear_error(tmp_path):
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    for name in ("bad.keras", "empty.keras"):
        with pytest.raises(DataError, match="not a Keras model file"):
            load_study_model(SMALL_STUDY_LIKE, tmp_path / name, tmp_path / name)


def test_stride_2_layers_align_like_tensorflow():
    """'same' with an even size pads after the image only: a stride-2 conv reads pixel 2i + 1, and its transposed
    conv writes there (PyTorch's symmetric padding uses 2i)."""
    x = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28)
    conv = SameConv2d(1, 1, 3, 2)
    transposed = SameConvTranspose2d(1, 1, 3, 2)
    for layer in (conv, transposed):
        with torch.no_grad():
            layer.weight.zero_()
            layer.weight[0, 0, 1, 1] = 1.0  # the kernel's centre only
            layer.bias.zero_()
    down = conv(x)
    assert down.shape == (1, 1, 14, 14)
    torch.testing.assert_close(down, x[..., 1::2, 1::2])
    up = transposed(down)
    assert up.shape == (1, 1, 28, 28)
    torch.testing.assert_close(up[..., 1::2, 1::2], down)
    assert up[..., 0::2, :].abs().sum() == 0 and up[..., :, 0::2].abs().sum() == 0


def test_model_files_from_before_the_padding_param_keep_their_padding():
    spec = dataclasses.asdict(SMALL_STUDY_LIKE)
    del spec["padding"]
    assert build_model(spec).spec.padding == "symmetric"
    assert build_model(dataclasses.asdict(SMALL_STUDY_LIKE)).spec.padding == "tensorflow"


def keras_adam_reference(grads: list[torch.Tensor], lr=1e-3, eps=1e-7, b1=0.9, b2=0.999) -> torch.Tensor:
    """Keras' Adam update written as Keras writes it: alpha_t = lr sqrt(1 - b2^t) / (1 - b1^t);
    p -= alpha_t m / (sqrt(v) + eps)."""
    p, m, v = torch.zeros_like(grads[0], dtype=torch.float64), 0, 0
    for t, g in enumerate(grads, 1):
        g = g.double()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p = p - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps)
    return p


def test_adam_epsilon_sits_where_keras_puts_it():
    torch.manual_seed(0)
    grads = [torch.randn(64) * 10 ** torch.empty(64).uniform_(-9, -3) for _ in range(5)]  # tiny, as at the start
    param = torch.zeros(64, requires_grad=True)
    optimizer = KerasAdam([param], lr=1e-3, eps=1e-7)
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
    torch.testing.assert_close(param.detach().double(), keras_adam_reference(grads), rtol=1e-5, atol=1e-12)
    pytorch = torch.zeros(64, requires_grad=True)
    plain = torch.optim.Adam([pytorch], lr=1e-3, eps=1e-7)
    for g in grads:
        pytorch.grad = g.clone()
        plain.step()
    assert (pytorch.detach().double() - keras_adam_reference(grads)).abs().max() > 1e-5  # the fix changes steps


def test_adam_epsilon_is_exact_after_a_resume():
    torch.manual_seed(1)
    grads = [torch.randn(16) * 1e-6 for _ in range(6)]

    def train(params_, optimizer_, steps):
        for g in steps:
            params_.grad = g.clone()
            optimizer_.step()

    straight = torch.zeros(16, requires_grad=True)
    train(straight, KerasAdam([straight], lr=1e-3, eps=1e-7), grads)
    first = torch.zeros(16, requires_grad=True)
    optimizer = KerasAdam([first], lr=1e-3, eps=1e-7)
    train(first, optimizer, grads[:3])
    resumed = first.detach().clone().requires_grad_(True)
    again = KerasAdam([resumed], lr=1e-3, eps=1e-7)
    again.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    train(resumed, again, grads[3:])
    torch.testing.assert_close(resumed, straight, rtol=0, atol=0)


@pytest.mark.slow  # reads ../shared, which the fast suite never does; the slow suite runs beside it
def test_the_study_weights_reproduce_the_studys_keras_forward_pass():
    """Outputs of the study's own Keras model on its published weights (benchmarks/keras_side_by_side.py golden)
    against the port loaded with the same files: within 1e-5 for every model."""
    assert STUDY_WEIGHTS.is_dir(), f"the study's published weights are not at {STUDY_WEIGHTS}: run beside ../shared"
    params, golden = load_params(REPO / "params.yaml"), np.load(GOLDEN)
    images = torch.from_numpy(golden["images"][:, None])
    for model in params.study.models:
        spec = params.variant(model)
        port = load_study_model(spec, *(STUDY_WEIGHTS / name for name in study_files(model)))
        symmetric = build_model(dataclasses.replace(spec, padding="symmetric")).eval()
        symmetric.load_state_dict(port.state_dict())
        with torch.no_grad():
            assert np.abs(port(images)[:, 0].numpy() - golden[model]).max() < 1e-5, model
            assert np.abs(symmetric(images)[:, 0].numpy() - golden[model]).max() > 0.05, model  # alignment matters
