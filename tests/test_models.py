"""The model zoo (pipeline.lib.models): the study's four autoencoders, spec-only variants, init and FLOPs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from pipeline import paths
from pipeline.lib.config import VariantSpec, load_params, parse_params
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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors, busy machine: one intra-op thread is faster than contending for two (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def spec(**overrides) -> VariantSpec:
    base = dict(
        encoder_filters=[16, 32],
        encoder_strides=[2, 2],
        latent_dim=16,
        decoder_filters=[32, 16],
        decoder_strides=[2, 2],
    )
    return VariantSpec(**{**base, **overrides})


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


def test_he_uniform_init_zero_biases_and_the_relu_bound():
    torch.manual_seed(0)
    model = build_model(spec(init="he_uniform"))
    for layer in (m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))):
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = math.sqrt(6 / fan_in)  # Keras he_uniform: variance 2 / fan_in
        assert torch.count_nonzero(layer.bias) == 0 and layer.weight.abs().max() <= bound, layer
        if layer.weight.numel() >= 256:
            assert layer.weight.abs().max() > 0.9 * bound, layer


def test_torch_default_init_is_different():
    torch.manual_seed(0)
    model = build_model(spec(init="torch_default"))
    assert any(torch.count_nonzero(m.bias) > 0 for m in model.modules() if isinstance(m, nn.Linear))


@torch.no_grad()
def test_linear_latent_can_be_negative(params, x):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(params.variant("model01"), latent_activation="linear"))
    z = model.encode(x)
    assert z.shape == (N, 32) and (z < 0).any() and (z > 0).any()
    assert isinstance(model.encoder[-1], nn.Identity)


# ---------------------------------------------------------------- variants defined only by a spec

SPECS = {
    "brief": {},
    "kernel5-gelu": dict(kernel_size=5, activation="gelu", latent_activation="tanh"),
    "one-layer": dict(encoder_filters=[8], encoder_strides=[2], decoder_filters=[8], decoder_strides=[2]),
    "odd-7x7": dict(
        encoder_filters=[4, 8, 8], encoder_strides=[2, 2, 1], decoder_filters=[8, 4], decoder_strides=[4, 1]
    ),
    "4x4-stride7": dict(
        encoder_filters=[4, 4, 4, 4], encoder_strides=[1, 2, 2, 2], decoder_filters=[4], decoder_strides=[7]
    ),
}


@pytest.mark.parametrize("overrides", SPECS.values(), ids=SPECS.keys())
@torch.no_grad()
def test_a_variant_defined_only_by_a_spec_builds(x, overrides):
    variant = spec(**overrides)
    raw = load_params_raw_with(variant)
    assert parse_params(raw).variant("new") == variant  # the schema accepts it ...
    model = build_model(variant)  # ... and it builds and round-trips 28x28
    z = model.encode(x)
    assert z.shape == (N, variant.latent_dim)
    out = model.decode(z)
    assert out.shape == (N, 1, 28, 28)
    assert torch.equal(out, model(x))
    assert ((out >= 0) & (out <= 1)).all()


@torch.no_grad()
def test_residual_wraps_exactly_the_shape_preserving_convs(x):
    from pipeline.lib.models import Residual

    variant = spec(
        encoder_filters=[16, 16, 32, 32],
        encoder_strides=[2, 1, 2, 1],
        decoder_filters=[32, 16, 16],
        decoder_strides=[1, 2, 2],
        residual=True,
    )
    model = build_model(variant)
    wrapped = [m for m in model.modules() if isinstance(m, Residual)]
    # encoder 16->16 and 32->32 at stride 1, decoder 32->32 at stride 1; never a stride-2 or channel change
    assert [(block[1].in_channels, block[1].out_channels) for block in wrapped] == [(16, 16), (32, 32), (32, 32)]
    block, h = wrapped[0], torch.rand(2, 16, 14, 14)
    assert torch.equal(block(h), h + block[1](block[0](h)))
    assert count_parameters(model) == count_parameters(build_model(dataclasses.replace(variant, residual=False)))
    assert model(x).shape == (N, 1, 28, 28)


@pytest.mark.parametrize("norm, kind", [("batch", nn.BatchNorm2d), ("group", nn.GroupNorm)])
def test_norm_follows_every_hidden_conv_and_none_keeps_the_old_layout(x, norm, kind):
    plain = spec()
    normed = build_model(dataclasses.replace(plain, norm=norm))
    convs = [m for m in normed.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    norms = [m for m in normed.modules() if isinstance(m, kind)]
    # every conv but the output layer, each normalising that conv's output channels
    assert [n.num_features if norm == "batch" else n.num_channels for n in norms] == [
        c.out_channels for c in convs[:-1]
    ]
    normed.train()
    normed(x).mean().backward()  # trains on a batch ...
    normed.eval()
    with torch.no_grad():  # ... and at test time one image decodes the same alone as in a batch
        assert torch.allclose(normed(x[:1]), normed(x)[:1], atol=1e-6)
    # norm: none adds no module, so the layer indices (and model files saved before the key existed) stay as they were
    layers = {"encoder": (0, 2, 5), "decoder": (0, 3, 5, 7)}
    expected = [f"{part}.{i}.{p}" for part, indices in layers.items() for i in indices for p in ("weight", "bias")]
    assert list(build_model(plain).state_dict()) == expected


@torch.no_grad()
def test_with_residual_the_norm_sits_inside_the_branch(x):
    from pipeline.lib.models import Residual

    model = build_model(spec(encoder_filters=[16, 16], encoder_strides=[2, 1], residual=True, norm="batch")).eval()
    (block,) = [m for m in model.modules() if isinstance(m, Residual)]
    norm, act, conv = block
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == conv.in_channels == 16
    h = torch.rand(2, 16, 14, 14)
    assert torch.equal(block(h), h + conv(act(norm(h))))


def load_params_raw_with(variant: VariantSpec) -> dict:
    return {"variants": {"new": dataclasses.asdict(variant)}}


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


def test_training_flops_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    training_flops_per_image(spec(), batch=1)
    assert torch.equal(torch.rand(4), expected)


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


@pytest.mark.parametrize(
    "loc, log_scale", [(0.0, 0.0), (0.3, 1.0), (-2.0, -1.0), (0.0, -4.6)]
)  # the last: 1 / scale near 100
def test_laplace_prior_bits_are_minus_log2_of_a_normalised_bin_probability(loc, log_scale):
    from pipeline.lib.models import LaplacePrior

    prior = LaplacePrior(1)
    with torch.no_grad():
        prior.loc.fill_(loc)
        prior.log_scale.fill_(log_scale)
    bits = prior.bits(torch.arange(-300, 301, dtype=torch.float32)[:, None]).detach().double()
    assert float((2**-bits).sum()) == pytest.approx(1.0, abs=1e-6)
    scale = math.exp(log_scale)
    # the survival function 1 - CDF, exact in double precision far into the upper tail (where 1 - CDF < 1e-16)
    sf = lambda t: 0.5 * math.exp(-(t - loc) / scale) if t >= loc else 1 - 0.5 * math.exp((t - loc) / scale)  # noqa: E731
    assert float(bits[300 + 1]) == pytest.approx(-math.log2(sf(0.5) - sf(1.5)), rel=1e-5)
    far = prior.bits(torch.tensor([[1000.0]])).detach()  # far in the tail the closed form stays exact (no clamping)
    assert float(far) == pytest.approx(
        -math.log2(0.5 * math.expm1(1 / scale)) + (1000.5 - loc) / scale / math.log(2), rel=1e-5
    )


def test_rate_variant_quantises_at_test_time_and_trains_its_prior():
    spec = VariantSpec(
        encoder_filters=[4],
        encoder_strides=[2],
        latent_dim=3,
        decoder_filters=[4],
        decoder_strides=[2],
        latent_activation="linear",
        rate_weight=0.01,
    )
    model = build_model(spec)
    x = torch.rand(5, 1, 28, 28)
    model.eval()
    assert torch.equal(model.encode(x), model.encode(x).round())
    model.train()
    recon, bits = model.forward_with_rate(x)
    (recon.square().mean() + bits.mean()).backward()
    assert model.prior.loc.grad is not None and model.prior.log_scale.grad.abs().sum() > 0
    assert build_model({**vars(spec), "rate_weight": 0.0}).forward_with_rate(x)[1] is None
