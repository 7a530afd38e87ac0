"""The copy of a model's decoder that encode-time refinement (pipeline.lib.refine) searches through: batch norms folded
into the convolutions before them and, where it saves copies, mirrored. It decodes what the model's decoder does, up
to float rounding (and flipped, when mirrored)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from pipeline.lib.models import SameConvTranspose2d


def inference_decoder(model) -> tuple[nn.Module, bool]:
    """A copy of the model's decoder for the search, without parameter gradients and with each batch norm folded
    into the convolution before it: in eval mode it is a per-channel affine map, so only float rounding changes and
    each pass is cheaper. True with it when the copy is also mirrored (_mirror): it then decodes every image upside
    down and left to right, and the search compares it with the images flipped the same way."""
    decoder = copy.deepcopy(model.decoder)
    _fold_batch_norms(decoder)
    mirrored = _mirror(decoder)
    return decoder.requires_grad_(False), mirrored


def _mirror(decoder: nn.Module) -> bool:
    """Mirrors the decoder in place if it has an upsampling layer with TensorFlow's padding that keeps the first
    rows and columns of its full output and drops the last (kernel 3, stride 2): PyTorch's own padding keeps the last,
    so that layer computes the full output, crops it, and adds its bias, each a copy forward and back. Mirrored, with
    every kernel flipped and the first feature map built upside down and left to right, that layer keeps the last
    rows, so PyTorch's padding does it without a copy (the saving: reports/results/README.md). The first map is also
    laid out channels last, as the convolutions want it, without a copy."""
    layers = [m for m in decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    crops = [_dropped(m) for m in layers if isinstance(m, SameConvTranspose2d)]
    if len(crops) < len(layers) or not isinstance(decoder[0], nn.Linear):
        return False  # PyTorch's own padding already: mirroring would make its layers crop instead
    if None in crops or all(before == after for before, after in crops):
        return False  # a layer mirroring cannot express in PyTorch's padding, or none that would gain
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SameConvTranspose2d):
                setattr(parent, name, _mirrored_transpose(child))
            elif isinstance(child, nn.Unflatten):
                channels, height, width = child.unflattened_size
                order = torch.arange(channels * height * width).view(channels, height, width)
                _select_outputs(decoder[0], order.flip(1, 2).permute(1, 2, 0).reshape(-1))
                setattr(parent, name, _ChannelsLastUnflatten(channels, height, width))
    return True


def _mirrored_transpose(layer: SameConvTranspose2d) -> nn.ConvTranspose2d:
    """The layer with its kernel flipped, keeping the last rows and columns where it kept the first."""
    before, after = _dropped(layer)
    kernel, stride = layer.kernel_size[0], layer.stride[0]
    mirrored = nn.ConvTranspose2d(
        layer.in_channels, layer.out_channels, kernel, stride, after, output_padding=after - before
    ).to(layer.weight.device)
    mirrored.weight = nn.Parameter(layer.weight.detach().flip(-2, -1))  # flip keeps channels last
    mirrored.bias = nn.Parameter(layer.bias.detach().clone())
    return mirrored


def _dropped(layer: SameConvTranspose2d) -> tuple[int, int] | None:
    """The rows (and columns) of the full transposed convolution that the layer drops before and after its output;
    None where mirrored PyTorch padding cannot give them (a kernel shorter than the stride, an output padding as
    large as the stride)."""
    kernel, stride = layer.kernel_size[0], layer.stride[0]
    before = (kernel - stride) // 2
    after = kernel - stride - before
    return (before, after) if before >= 0 and after - before < stride else None


def _select_outputs(linear: nn.Linear, order: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[order])
    linear.bias = nn.Parameter(linear.bias.detach()[order])


class _ChannelsLastUnflatten(nn.Module):
    """Unflatten for features in (height, width, channel) order: an (N, C, H, W) view laid out channels last."""

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.shape = (height, width, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(len(x), *self.shape).permute(0, 3, 1, 2)


def _fold_batch_norms(module: nn.Module) -> None:
    children = list(module.named_children())
    for (_, layer), (name, norm) in zip(children, children[1:]):
        if (
            isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))
            and isinstance(norm, nn.BatchNorm2d)
            and norm.running_mean is not None
        ):
            layer.weight, layer.bias = fuse_conv_bn_weights(
                layer.weight,
                layer.bias,
                norm.running_mean,
                norm.running_var,
                norm.eps,
                norm.weight,
                norm.bias,
                transpose=isinstance(layer, nn.ConvTranspose2d),
            )
            setattr(module, name, nn.Identity())
    for child in module.children():
        _fold_batch_norms(child)
