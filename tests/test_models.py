"""The study's four autoencoders (pipeline.lib.models): their layers, sizes, parameter counts and Glorot init,
their FLOPs, and a model file's stored spec."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from pipeline import paths
from pipeline.lib.config import load_params
from pipeline.lib.losses import log_mse_ssim
from pipeline.lib.models import (
    Autoencoder,
    build_model,
    count_parameters,
    inference_flops_per_image,
    training_flops_per_image,
)

# ORIGINAL_STUDY.md: the position (1-based) of the one stride-2 transposed conv in each decoder
STRIDE2_AT = {"model01": 3, "model02": 4, "model03": 2, "model04": 1}
ENCODER_PARAMS, DECODER_PARAMS, TOTAL_PARAMS = 494_112, 543_489, 1_037_601
N = 4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def params():
    return load_params(paths.REPO_ROOT / "params.yaml")


@pytest.fixture(scope="module")
def models(params) -> dict[str, Autoencoder]:
    torch.manual_seed(0)
    return {name: build_model(params.variant(name)).eval() for name in STRIDE2_AT}


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- the study's four models


@pytest.mark.parametrize("name", STRIDE2_AT)
def test_parameter_counts_match_the_study(models, name):
    model = models[name]
    assert count_parameters(model.encoder) == ENCODER_PARAMS
    assert count_parameters(model.decoder) == DECODER_PARAMS
    assert count_parameters(model) == TOTAL_PARAMS


@pytest.mark.parametrize("name", STRIDE2_AT)
@torch.no_grad()
def test_shapes_ranges_and_encode_decode_equals_forward(models, x, name):
    model = models[name]
    out = model(x)
    assert out.shape == (N, 1, 28, 28) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    z = model.encode(x)
    assert z.shape == (N, 32)
    assert (z >= 0).all()  # ReLU latent: 32 non-negative floats
    assert torch.equal(model.decode(z), out)


@pytest.mark.parametrize("name, position", STRIDE2_AT.items())
def test_the_stride2_layer_is_where_the_study_puts_it(models, name, position):
    model = models[name]
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [m.stride for m in convs] == [(1, 1), (2, 2), (1, 1), (1, 1)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 32), (32, 64), (64, 64), (64, 64)]
    tconvs = [m for m in model.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert len(tconvs) == 5  # four 3x3 layers, then the 32->1 sigmoid output layer
    strides = [m.stride[0] for m in tconvs]
    assert strides == [2 if i == position else 1 for i in range(1, 5)] + [1]
    assert [(m.in_channels, m.out_channels) for m in tconvs] == [(64, 64), (64, 64), (64, 64), (64, 32), (32, 1)]
    assert all(m.kernel_size == (3, 3) for m in convs + tconvs)
    if name == "model02":
        assert tconvs[3].out_channels == 32  # "the 32-filter layer"
    assert isinstance(model.decoder[-1], nn.Sigmoid)


@torch.no_grad()
def test_the_feature_map_sizes_follow_the_study(models, x):
    """14x14 after the encoder's stride-2 conv; 28x28 from the stride-2 transposed conv onwards."""
    for name, position in STRIDE2_AT.items():
        sizes, h = [], models[name].encode(x)
        for layer in models[name].decoder:
            h = layer(h)
            if isinstance(layer, nn.ConvTranspose2d):
                sizes.append(h.shape[-1])
        assert sizes == [14] * (position - 1) + [28] * (6 - position), name


def test_glorot_init_zero_biases_and_weights_within_the_bound(models):
    for name, model in models.items():
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
        assert len(layers) == 4 + 1 + 1 + 5
        for layer in layers:
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert torch.count_nonzero(layer.bias) == 0, (name, layer)
            assert layer.weight.abs().max() <= bound, (name, layer)
            if layer.weight.numel() >= 256:  # uniform on [-bound, bound], not a narrower default
                assert layer.weight.abs().max() > 0.9 * bound, (name, layer)
                assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.15 * bound, (name, layer)


@torch.no_grad()
def test_linear_latent_can_be_negative(params, x):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(params.variant("model01"), latent_activation="linear"))
    z = model.encode(x)
    assert z.shape == (N, 32) and (z < 0).any() and (z > 0).any()
    assert isinstance(model.encoder[-1], nn.Identity)


# ---------------------------------------------------------------- FLOPs


def test_training_flops_per_image(params):
    flops = {name: training_flops_per_image(params.variant(name), batch=2) for name in ("model01", "model04")}
    assert abs(flops["model01"] - 332e6) / 332e6 < 0.01  # ORIGINAL_STUDY.md: ~333 MFLOP per training step
    assert flops["model04"] > flops["model01"]  # upsampling earlier runs three 64-filter layers at 28x28


def test_inference_flops_are_the_encoders_plus_the_decoders_and_a_third_of_training(params):
    spec = params.variant("model01")
    forward, encode, decode = (inference_flops_per_image(spec, part) for part in ("forward", "encode", "decode"))
    assert forward == encode + decode
    assert forward * 3 == pytest.approx(training_flops_per_image(spec, batch=2), rel=0.01)  # backward: 2x forward


def test_the_flop_budget_in_reference_yaml_is_model01s_counted_flops(params):
    import yaml

    budget = yaml.safe_load(paths.REFERENCE_FILE.read_text())["train_flops_per_image"]["model01"]
    assert training_flops_per_image(params.variant("model01")) == budget


def test_training_flops_count_an_ssim_objective_and_model01_ssim_stays_in_budget(params):
    spec = params.variant("model01_ssim")
    with_ssim = training_flops_per_image(spec, objective=log_mse_ssim)
    assert with_ssim > training_flops_per_image(spec)  # the SSIM window filters are matmuls the counter sees
    assert with_ssim <= training_flops_per_image(params.variant("model01"))


# ---------------------------------------------------------------- model files


@torch.no_grad()
def test_build_model_accepts_the_spec_stored_in_a_model_file(tmp_path, params, models, x):
    """As train.py writes models/<variant>.pt and evaluate.py reads it back."""
    variant = params.variant("model03")
    path = tmp_path / "model03.pt"
    torch.save(
        {"variant": "model03", "spec": dataclasses.asdict(variant), "state_dict": models["model03"].state_dict()}, path
    )
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert isinstance(saved["spec"], dict)
    model = build_model(saved["spec"])
    assert model.spec == variant
    model.load_state_dict(saved["state_dict"])
    assert torch.equal(model.eval()(x), models["model03"](x))
