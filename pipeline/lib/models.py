"""The model zoo: a VariantSpec from params.yaml -> an autoencoder with separate encode() and decode()."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.lib.config import IMAGE_SIZE, VariantSpec
from pipeline.lib.io import load_torch

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


SYMBOL_LIMIT = 32767  # an entropy-coded latent is an integer in [-SYMBOL_LIMIT, SYMBOL_LIMIT] per dimension
COLLAPSED_RANGE = 1e-3  # an output pixel (in [0, 1]) that moves less than this over the images has not moved


def is_collapsed(output_range: float, images: int) -> bool:
    """Whether a model decodes every one of several images to the same image: no output pixel moved by
    COLLAPSED_RANGE over them (output_range: the largest range of any pixel). Training's warning after an epoch and
    evaluate's `collapsed` both ask this; one image has no range to judge by."""
    return images > 1 and output_range < COLLAPSED_RANGE


class LaplacePrior(nn.Module):
    """Factorised prior of an integer latent: per dimension, Laplace(loc, scale) integrated over unit bins."""

    def __init__(self, dim: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(min=0.01)

    def bits(self, z: torch.Tensor) -> torch.Tensor:
        """-log2 P(unit bin around z), summed over dimensions: bits per image. By symmetry the bin is moved to
        the lower tail (v <= 0), where a Laplace CDF is 0.5 * exp(t / scale) and a tail bin's log-probability
        has a closed form that stays exact however far out z lies."""
        scale, v = self.scale(), -(z.float() - self.loc).abs()
        # log(expm1(a)) written as a + log(1 - exp(-a)): expm1 overflows float32 once a = 1 / scale > 88.7
        inverse = 1 / scale
        log_tail = math.log(0.5) + (v - 0.5) / scale + inverse + torch.log(-torch.expm1(-inverse))
        centre = 1 - 0.5 * torch.exp((-v - 0.5) / scale) - 0.5 * torch.exp((v - 0.5) / scale)
        log_p = torch.where(v <= -0.5, log_tail, torch.log(centre.clamp(min=1e-30)))
        return -log_p.sum(1) / math.log(2)


class Autoencoder(nn.Module):
    """Conv encoder -> dense latent -> dense + transposed-conv decoder, all shapes from the spec.

    With spec.rate_weight > 0 the latent is quantised to integers (uniform noise while training, the usual
    differentiable stand-in for rounding) and has a learned prior that an entropy coder can use."""

    def __init__(self, spec: VariantSpec):
        super().__init__()
        self.spec = spec
        self.encoder = _encoder(spec)
        self.decoder = _decoder(spec)
        self.prior = LaplacePrior(spec.latent_dim) if spec.rate_weight > 0 else None
        if spec.init != "torch_default":
            self.apply(INITIALISERS[spec.init])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent the decoder sees at test time (integers for an entropy-coded latent)."""
        return self.quantize(self.encoder(x))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        if self.prior is None:
            return z
        if self.training:
            return z.float() + torch.empty_like(z, dtype=torch.float32).uniform_(-0.5, 0.5)
        return torch.round(z.float()).clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def forward_with_rate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reconstruction and the prior's bits per image (None without a prior), from one encoder pass."""
        z = self.encode(x)
        return self.decode(z), (self.prior.bits(z) if self.prior is not None else None)


MISSING_MODEL = (
    "run the train stage first (dvc repro train@<variant>-<seed>; a variant outside matrix: needs "
    "dvc exp run -S 'matrix=[<variant>]')"
)


def load_model(path: Path, device: torch.device) -> tuple[Autoencoder, dict]:
    """A trained model file -> (model in eval mode on the device, the file's metadata)."""
    saved = load_torch(path, MISSING_MODEL)
    model = build_model(saved["spec"])
    model.load_state_dict(saved["state_dict"])
    # channels_last: faster convolutions on CPU than NCHW
    return model.to(device, memory_format=torch.channels_last).eval(), saved


def build_model(spec: VariantSpec | dict) -> Autoencoder:
    if isinstance(spec, dict):  # as stored in a model file; files from before spec.padding was symmetric
        spec = VariantSpec(**{"padding": "symmetric", **spec})
    return Autoencoder(spec)


class Residual(nn.Sequential):
    """x + layers(x) around a shape-preserving conv. The branch is pre-activation, act then conv: with conv then
    ReLU every block only adds, activations grow with depth, and the probe models collapsed to a constant image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


NORMS = {"batch": nn.BatchNorm2d, "group": lambda channels: nn.GroupNorm(math.gcd(8, channels), channels)}


def _norm(spec: VariantSpec, channels: int) -> list[nn.Module]:
    """No module at all for norm: none, so the layer indices (and saved state_dicts) of older models stay valid."""
    return [] if spec.norm == "none" else [NORMS[spec.norm](channels)]


def _conv_block(spec: VariantSpec, conv: nn.Module, channels: int, filters: int, stride: int) -> list[nn.Module]:
    if spec.residual and stride == 1 and channels == filters:
        return [Residual(*_norm(spec, channels), ACTIVATIONS[spec.activation](), conv)]
    return [conv, *_norm(spec, filters), ACTIVATIONS[spec.activation]()]


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's 'same' padding: out = ceil(in / stride), and where the total padding is odd the
    extra row and column go after the image (a stride-2 conv on 28 pads only bottom and right, so output pixel i
    is centred on input pixel 2i + 1). The study's Keras model pads this way; symmetric padding centres on 2i."""

    def __init__(self, channels: int, filters: int, kernel_size: int, stride: int):
        super().__init__(channels, filters, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = _same_padding(x, self.kernel_size[0], self.stride[0])
        if (left, top) == (right, bottom):  # symmetric: the convolution pads by itself, without a padded copy
            return nn.functional.conv2d(x, self.weight, self.bias, self.stride, (top, left))
        return super().forward(nn.functional.pad(x, (left, right, top, bottom)))


def _same_padding(x: torch.Tensor, kernel: int, stride: int) -> tuple[int, int, int, int]:
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad's order: last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class SameConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d with TensorFlow's 'same' padding: out = in * stride, taken from the full transposed
    convolution by dropping max(kernel - stride, 0) // 2 rows and columns before (a stride-2 3x3 layer on 14 keeps
    the first 28 of 29; PyTorch's padding + output_padding keeps the last 28), zeros after where the full one is
    shorter (kernel < stride), and the bias added last, on every output pixel, as TensorFlow adds it."""

    def __init__(self, channels: int, filters: int, kernel_size: int, stride: int):
        super().__init__(channels, filters, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride, kernel = self.stride[0], self.kernel_size[0]
        start = max(kernel - stride, 0) // 2
        if kernel - stride == 2 * start:  # as many dropped after as before: PyTorch's padding, without the full copy
            return nn.functional.conv_transpose2d(x, self.weight, self.bias, stride, start)
        full = nn.functional.conv_transpose2d(x, self.weight, None, stride)
        height, width = x.shape[-2] * stride, x.shape[-1] * stride
        out = full[..., start : start + height, start : start + width]
        if out.shape[-2:] != (height, width):
            out = nn.functional.pad(out, (0, width - out.shape[-1], 0, height - out.shape[-2]))
        return out + self.bias[:, None, None]


def _symmetric_conv(channels: int, filters: int, kernel_size: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, filters, kernel_size, stride, kernel_size // 2)


def _symmetric_conv_transpose(channels: int, filters: int, kernel_size: int, stride: int) -> nn.ConvTranspose2d:
    # output_padding = stride - 1 gives out = in * stride, from the last rows of the full transposed convolution
    return nn.ConvTranspose2d(channels, filters, kernel_size, stride, kernel_size // 2, output_padding=stride - 1)


# spec.padding -> (conv, transposed conv). The layers' parameters are the same either way; only alignment differs.
PADDINGS = {"tensorflow": (SameConv2d, SameConvTranspose2d), "symmetric": (_symmetric_conv, _symmetric_conv_transpose)}


def _encoder(spec: VariantSpec) -> nn.Sequential:
    layers, channels, conv = [], 1, PADDINGS[spec.padding][0]
    for filters, stride in zip(spec.encoder_filters, spec.encoder_strides):
        layers += _conv_block(spec, conv(channels, filters, spec.kernel_size, stride), channels, filters, stride)
        channels = filters
    size = spec.encoded_size()
    layers += [nn.Flatten(), nn.Linear(channels * size * size, spec.latent_dim), ACTIVATIONS[spec.latent_activation]()]
    return nn.Sequential(*layers)


def _decoder(spec: VariantSpec) -> nn.Sequential:
    channels, size, k = spec.encoder_filters[-1], spec.encoded_size(), spec.kernel_size
    conv_transpose = PADDINGS[spec.padding][1]
    layers = [
        nn.Linear(spec.latent_dim, channels * size * size),
        ACTIVATIONS[spec.activation](),
        nn.Unflatten(1, (channels, size, size)),
    ]
    for filters, stride in zip(spec.decoder_filters, spec.decoder_strides):
        layers += _conv_block(spec, conv_transpose(channels, filters, k, stride), channels, filters, stride)
        channels = filters
    layers += [conv_transpose(channels, 1, k, 1), ACTIVATIONS[spec.output_activation]()]
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


def training_flops_per_image(spec: VariantSpec, batch: int = 8, objective=nn.functional.mse_loss) -> int:
    """Forward + backward FLOPs per image, counted by torch's FLOP counter on a CPU copy, with the objective(recon, x)
    the model trains on (the counter sees matmuls and convs: an SSIM term's window filters count, an MSE does not).

    Leaves torch's global RNG untouched, so it is safe to call between seeding and building the real model.
    """
    with torch.random.fork_rng(devices=[]):
        model = build_model(dataclasses.replace(spec, init="torch_default"))
        x = torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE)
        with FlopCounterMode(display=False) as counter:
            objective(model(x), x).backward()
    return counter.get_total_flops() // batch


def inference_flops_per_image(spec: VariantSpec, part: str = "forward") -> int:
    """FLOPs of one image through the model's `part` (forward, encode or decode), counted as above."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model = build_model(dataclasses.replace(spec, init="torch_default")).eval()
        x = torch.rand(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        inputs = model.encode(x) if part == "decode" else x
        with FlopCounterMode(display=False) as counter:
            getattr(model, part)(inputs)
    return counter.get_total_flops()
