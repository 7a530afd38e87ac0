"""The model zoo: a VariantSpec from params.yaml -> an autoencoder with separate encode() and decode()."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import IMAGE_SIZE, VariantSpec

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "linear": nn.Identity,
    "sigmoid": nn.Sigmoid,
}


class Autoencoder(nn.Module):
    """Conv encoder -> dense latent -> dense + transposed-conv decoder, all shapes from the spec."""

    def __init__(self, spec: VariantSpec):
        super().__init__()
        self.spec = spec
        self.encoder = _encoder(spec)
        self.decoder = _decoder(spec)
        if spec.init != "torch_default":
            self.apply(INITIALISERS[spec.init])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def build_model(spec: VariantSpec | dict) -> Autoencoder:
    if isinstance(spec, dict):  # as stored in a model file
        spec = VariantSpec(**spec)
    return Autoencoder(spec)


def _encoder(spec: VariantSpec) -> nn.Sequential:
    layers, channels, pad = [], 1, spec.kernel_size // 2
    for filters, stride in zip(spec.encoder_filters, spec.encoder_strides):
        layers += [nn.Conv2d(channels, filters, spec.kernel_size, stride, pad), ACTIVATIONS[spec.activation]()]
        channels = filters
    size = spec.encoded_size()
    layers += [nn.Flatten(), nn.Linear(channels * size * size, spec.latent_dim),
               ACTIVATIONS[spec.latent_activation]()]
    return nn.Sequential(*layers)


def _decoder(spec: VariantSpec) -> nn.Sequential:
    channels, size, k = spec.encoder_filters[-1], spec.encoded_size(), spec.kernel_size
    layers = [nn.Linear(spec.latent_dim, channels * size * size), ACTIVATIONS[spec.activation](),
              nn.Unflatten(1, (channels, size, size))]
    for filters, stride in zip(spec.decoder_filters, spec.decoder_strides):
        # output_padding = stride - 1 makes 'same' padding exact: out = in * stride, as in Keras
        layers += [nn.ConvTranspose2d(channels, filters, k, stride, k // 2, output_padding=stride - 1),
                   ACTIVATIONS[spec.activation]()]
        channels = filters
    layers += [nn.ConvTranspose2d(channels, 1, k, 1, k // 2), ACTIVATIONS[spec.output_activation]()]
    return nn.Sequential(*layers)


def _glorot_uniform(module: nn.Module) -> None:
    """Keras' default initialisation (the study's): Glorot-uniform kernels, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def _he_uniform(module: nn.Module) -> None:
    """Keras' he_uniform: uniform with variance 2 / fan_in (suited to ReLU), zero biases."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)


INITIALISERS = {"glorot_uniform": _glorot_uniform, "he_uniform": _he_uniform}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def training_flops_per_image(spec: VariantSpec, batch: int = 8) -> int:
    """Forward + backward FLOPs per image, counted by torch's FLOP counter on a CPU copy.

    Leaves torch's global RNG untouched, so it is safe to call between seeding and building the real model.
    """
    with torch.random.fork_rng(devices=[]):
        model = build_model(dataclasses.replace(spec, init="torch_default"))
        x = torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE)
        with FlopCounterMode(display=False) as counter:
            nn.functional.mse_loss(model(x), x).backward()
    return counter.get_total_flops() // batch
