"""The codec's encoder-side latent refinement: a slower, better encoder for the same decoder and stream.

codec.refine_steps > 0 in params.yaml turns it on for `codec compress` (uint8 and uint8_range streams) and for
evaluate, which share this code path; the model's weights never move. Each image's latent is searched on its own
log MSE through the fixed decoder, inside the uint8 grid's box. codec.refine_method lbfgs (the default): L-BFGS with
each image's own curvature history, measured in grid cells, an image stopping once its steps fall below
codec.refine_tol cells; adam: a fixed number of Adam steps (the first method, kept for comparison).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from tqdm import tqdm

from pipeline.lib.device import as_batch_tensor
from pipeline.lib.losses import log_mse_per_image
from pipeline.lib.models import SameConvTranspose2d
from pipeline.lib.quantize import uint8_scale

REFINE_BATCH = 64  # decoder passes forward and back cost least per image at 32-64 images on CPU (reports/results)
HISTORY = 8  # L-BFGS curvature pairs kept per image
FIRST_STEP_CELLS = 2.0  # with no curvature known yet: steepest descent, the steepest dimension moving this far
ARMIJO = 1e-4  # a step is taken only if it lowers the loss by this fraction of the first-order prediction


def applied_refine_steps(model, cfg) -> int:
    """codec.refine_steps, or 0 for an entropy-coded variant: its integer latents are not refined."""
    return 0 if model.prior is not None else cfg.refine_steps


def refine_latents(model, images: np.ndarray, latents: torch.Tensor, cfg, calibration) -> torch.Tensor:
    """The encoder-side search (cfg: config.CodecConfig) for each image's latent, starting at the encoder's and kept
    inside the uint8 grid's box (calibration: (lo, hi)). The model's weights do not move and the decoder is
    unchanged, so the uint8 stream carries the result as it would the encoder's. Variants with an entropy-coded
    (integer) latent keep the encoder's latents. Each latent follows its own image's error alone, up to float
    rounding, which depends on the batch an image shares."""
    if applied_refine_steps(model, cfg) == 0 or len(images) == 0:
        return latents
    if model.training:  # batch norm would mix the images of a batch and move its running statistics
        raise ValueError("refine_latents needs a model in eval mode (load_model gives one)")
    device = next(model.parameters()).device
    decoder, mirrored = inference_decoder(model)
    box = tuple(torch.from_numpy(bound).to(device) for bound in calibration)
    cell = uint8_scale(*calibration).to(device)
    search = _lbfgs if cfg.refine_method == "lbfgs" else _adam
    refined = []
    bar = tqdm(total=len(images), desc=f"refine latents ({cfg.refine_method})", unit="image", mininterval=1.0)
    with torch.enable_grad(), bar:
        for i in range(0, len(images), REFINE_BATCH):
            x = as_batch_tensor(images[i : i + REFINE_BATCH], device)
            x = (x.flip(-2, -1) if mirrored else x).contiguous(memory_format=torch.channels_last)
            z = latents[i : i + REFINE_BATCH].to(device).float().clamp(*box)
            refined.append(search(decoder, x, z, box, cell, cfg).cpu())
            bar.update(len(x))
    return torch.cat(refined)


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


def _loss_and_grad(decoder, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's log MSE at its latent, and its gradient (the sum's gradient: images do not interact)."""
    z = z.detach().requires_grad_(True)
    loss = log_mse_per_image(decoder(z).float(), x)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad


def _adam(decoder, x, z, box, cell, cfg) -> torch.Tensor:
    """cfg.refine_steps Adam steps at rate cfg.refine_lr, every image in the batch together."""
    z = z.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=cfg.refine_lr)
    for _ in range(cfg.refine_steps):
        z.grad = _loss_and_grad(decoder, x, z)[1]
        optimizer.step()
        with torch.no_grad():
            z.clamp_(*box)
    return z.detach()


def _lbfgs(decoder, x, z, box, cell, cfg) -> torch.Tensor:
    """At most cfg.refine_steps L-BFGS steps per image, in grid-cell units (so the tolerance and the first step are
    in the stream's own resolution). A step that fails the Armijo test is retried at half the length; an image stops
    once its next step would move no dimension by cfg.refine_tol cells, without taking it. Each step is one decoder
    pass forward and back, and only the images still searching take it."""
    lo, top = box[0], (box[1] - box[0]) / cell
    bottom = torch.zeros_like(top)

    def measure(u, rows):
        loss, grad = _loss_and_grad(decoder, x[rows], lo + u * cell)
        return loss, grad * cell

    u = (z - lo) / cell
    loss, grad = measure(u, slice(None))
    history = _Curvature(*u.shape, u.device)
    length = torch.ones(len(u), device=u.device)
    searching = torch.ones(len(u), dtype=torch.bool, device=u.device)
    for _ in range(cfg.refine_steps):
        rows = searching.nonzero().squeeze(1)
        trial = torch.clamp(u[rows] + length[rows, None] * history.direction(rows, grad[rows]), bottom, top)
        step = trial - u[rows]
        converged = step.abs().amax(1) < cfg.refine_tol  # such a step is not worth its pass
        searching[rows[converged]] = False
        rows, trial, step = rows[~converged], trial[~converged], step[~converged]
        if len(rows) == 0:
            break
        trial_loss, trial_grad = measure(trial, rows)
        taken = trial_loss <= loss[rows] + ARMIJO * (grad[rows] * step).sum(1)
        moved = rows[taken]
        history.add(moved, step[taken], trial_grad[taken] - grad[moved])
        u[moved], loss[moved], grad[moved], length[moved] = trial[taken], trial_loss[taken], trial_grad[taken], 1.0
        length[rows[~taken]] /= 2
    return (lo + u * cell).clamp(*box)  # grid units -> latents, without float overshoot past the box


class _Curvature:
    """Each image's last HISTORY L-BFGS pairs (step, change in gradient), newest last; an empty slot has rho 0."""

    def __init__(self, n: int, dim: int, device):
        self.s = torch.zeros(n, HISTORY, dim, device=device)
        self.y = torch.zeros(n, HISTORY, dim, device=device)
        self.rho = torch.zeros(n, HISTORY, device=device)

    def add(self, rows: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> None:
        sy = (s * y).sum(1)
        curved = sy > 1e-8 * s.norm(dim=1) * y.norm(dim=1)  # a pair without positive curvature would break descent
        rows, s, y, sy = rows[curved], s[curved], y[curved], sy[curved]
        self.s[rows] = torch.cat([self.s[rows, 1:], s[:, None]], 1)
        self.y[rows] = torch.cat([self.y[rows, 1:], y[:, None]], 1)
        self.rho[rows] = torch.cat([self.rho[rows, 1:], (1 / sy)[:, None]], 1)

    def direction(self, rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The two-loop recursion's -H grad; steepest descent of FIRST_STEP_CELLS for an image with no pair yet."""
        s, y, rho = self.s[rows], self.y[rows], self.rho[rows]
        q, alpha = grad.clone(), torch.zeros_like(rho)
        for i in reversed(range(HISTORY)):
            alpha[:, i] = rho[:, i] * (s[:, i] * q).sum(1)
            q -= alpha[:, i, None] * y[:, i]
        newest_yy = (y[:, -1] * y[:, -1]).sum(1).clamp_min(torch.finfo(q.dtype).tiny)
        r = (rho[:, -1] * newest_yy).reciprocal().nan_to_num(0, 0, 0)[:, None] * q  # gamma = s'y / y'y
        for i in range(HISTORY):
            beta = rho[:, i] * (y[:, i] * r).sum(1)
            r += s[:, i] * (alpha[:, i] - beta)[:, None]
        steepest = FIRST_STEP_CELLS * grad / grad.abs().amax(1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
        return -torch.where(rho[:, -1:] > 0, r, steepest)
