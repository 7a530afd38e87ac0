"""Variants defined only by a spec (pipeline.lib.models): any layer list, residual blocks, norms, inits, the
rate variant's Laplace prior, and that counting a spec's FLOPs leaves the global RNG alone."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from pipeline.lib.config import VariantSpec, parse_params
from pipeline.lib.models import LaplacePrior, Residual, build_model, count_parameters, training_flops_per_image

N = 4

pytestmark = pytest.mark.usefixtures("one_thread")


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
    model = build_model(spec(encoder_filters=[16, 16], encoder_strides=[2, 1], residual=True, norm="batch")).eval()
    (block,) = [m for m in model.modules() if isinstance(m, Residual)]
    norm, act, conv = block
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == conv.in_channels == 16
    h = torch.rand(2, 16, 14, 14)
    assert torch.equal(block(h), h + conv(act(norm(h))))


def load_params_raw_with(variant: VariantSpec) -> dict:
    return {"variants": {"new": dataclasses.asdict(variant)}}


def test_training_flops_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    training_flops_per_image(spec(), batch=1)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(
    "loc, log_scale", [(0.0, 0.0), (0.3, 1.0), (-2.0, -1.0), (0.0, -4.6)]
)  # the last: 1 / scale near 100
def test_laplace_prior_bits_are_minus_log2_of_a_normalised_bin_probability(loc, log_scale):
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
