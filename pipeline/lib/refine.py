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
    box = tuple(torch.from_numpy(bound).to(device) for bound in calibration)
    cell = uint8_scale(*calibration).to(device)
    search = _lbfgs if cfg.refine_method == "lbfgs" else _adam
    bar = tqdm(total=len(images), desc=f"refine latents ({cfg.refine_method})", unit="image", mininterval=1.0)
    with torch.enable_grad(), bar:
        return search(inference_decoder(model), images, latents.float().cpu(), box, cell, cfg, bar)


def inference_decoder(model) -> nn.Module:
    """A copy of the model's decoder for the search, without parameter gradients and with each batch norm folded
    into the convolution before it: in eval mode it is a per-channel affine map, so only float rounding changes and
    each pass is cheaper."""
    decoder = copy.deepcopy(model.decoder)
    _fold_batch_norms(decoder)
    return decoder.requires_grad_(False)


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


def _load(images: np.ndarray, first: int, count: int, device) -> torch.Tensor:
    return as_batch_tensor(images[first : first + count], device).contiguous(memory_format=torch.channels_last)


def _adam(decoder, images, latents, box, cell, cfg, bar) -> torch.Tensor:
    """cfg.refine_steps Adam steps at rate cfg.refine_lr, REFINE_BATCH images at a time."""
    refined = []
    for first in range(0, len(images), REFINE_BATCH):
        x = _load(images, first, REFINE_BATCH, box[0].device)
        z = latents[first : first + REFINE_BATCH].to(x.device).clamp(*box).requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=cfg.refine_lr)
        for _ in range(cfg.refine_steps):
            z.grad = _loss_and_grad(decoder, x, z)[1]
            optimizer.step()
            with torch.no_grad():
                z.clamp_(*box)
        refined.append(z.detach().cpu())
        bar.update(len(x))
    return torch.cat(refined)


def _lbfgs(decoder, images, latents, box, cell, cfg, bar) -> torch.Tensor:
    """At most cfg.refine_steps L-BFGS steps per image, in grid-cell units (so the tolerance and the first step are
    in the stream's own resolution). A step that fails the Armijo test is retried at half the length; an image stops
    once a step would move no dimension by cfg.refine_tol cells. Each step is one decoder pass forward and back.
    REFINE_BATCH images search at a time, and an image that stops hands its slot to the next one, whose first pass
    joins the others' steps: every pass is a full batch until the images run out (a batch that waited for its
    slowest image ran ever smaller passes, which cost more per image)."""
    lo, top = box[0], (box[1] - box[0]) / cell
    slots = _Slots(min(REFINE_BATCH, len(images)), images.shape[1:], latents.shape[1], lo.device)
    refined, first = latents.clone(), 0
    while True:
        new = slots.free()[: len(images) - first]
        if len(new):
            starts = (latents[first : first + len(new)].to(lo.device).clamp(*box) - lo) / cell
            slots.fill(new, _load(images, first, len(new), lo.device), starts, first)
            first += len(new)
        rows = slots.searching(new)
        if len(new) + len(rows) == 0:
            return refined
        direction = slots.history.direction(rows, slots.grad[rows])
        trial = torch.clamp(slots.u[rows] + slots.length[rows, None] * direction, torch.zeros_like(top), top)
        measured = torch.cat([new, rows])
        loss, grad = _loss_and_grad(decoder, slots.x[measured], lo + torch.cat([slots.u[new], trial]) * cell)
        slots.loss[new], slots.grad[new] = loss[: len(new)], grad[: len(new)] * cell
        done = slots.step(rows, trial, loss[len(new) :], grad[len(new) :] * cell, cfg)
        refined[slots.owner[done].cpu()] = (lo + slots.u[done] * cell).clamp(*box).cpu()  # without float overshoot
        slots.owner[done] = -1
        bar.update(len(done))


class _Slots:
    """The L-BFGS state of the images being refined, one slot each, in grid-cell units; owner: the image's index,
    -1 for a free slot."""

    def __init__(self, n: int, image_shape: tuple, dim: int, device):
        self.owner = torch.full((n,), -1, dtype=torch.long, device=device)
        self.x = torch.zeros(n, 1, *image_shape, device=device)
        self.u, self.grad = torch.zeros(n, dim, device=device), torch.zeros(n, dim, device=device)
        self.loss, self.length = torch.zeros(n, device=device), torch.ones(n, device=device)
        self.trials = torch.zeros(n, dtype=torch.long, device=device)
        self.history = _Curvature(n, dim, device)

    def free(self) -> torch.Tensor:
        return (self.owner < 0).nonzero().squeeze(1)

    def searching(self, new: torch.Tensor) -> torch.Tensor:
        """The slots with an image that has had its first pass."""
        occupied = self.owner >= 0
        occupied[new] = False
        return occupied.nonzero().squeeze(1)

    def fill(self, rows: torch.Tensor, x: torch.Tensor, u: torch.Tensor, first: int) -> None:
        self.x[rows], self.u[rows] = x, u
        self.owner[rows] = torch.arange(first, first + len(rows), device=rows.device)
        self.length[rows], self.trials[rows] = 1.0, 0
        self.history.clear(rows)

    def step(self, rows, trial, trial_loss, trial_grad, cfg) -> torch.Tensor:
        """Each searching image's trial: taken if it passes the Armijo test, else the next one is half as long.
        Returns the slots whose images stop: a step moving no dimension by cfg.refine_tol cells, or the last."""
        step = trial - self.u[rows]
        taken = trial_loss <= self.loss[rows] + ARMIJO * (self.grad[rows] * step).sum(1)
        moved = rows[taken]
        self.history.add(moved, step[taken], trial_grad[taken] - self.grad[moved])
        self.u[moved], self.loss[moved], self.grad[moved] = trial[taken], trial_loss[taken], trial_grad[taken]
        self.length[moved] = 1.0
        self.length[rows[~taken]] /= 2
        self.trials[rows] += 1
        return rows[(step.abs().amax(1) < cfg.refine_tol) | (self.trials[rows] >= cfg.refine_steps)]


class _Curvature:
    """Each image's last HISTORY L-BFGS pairs (step, change in gradient), newest last; an empty slot has rho 0."""

    def __init__(self, n: int, dim: int, device):
        self.s = torch.zeros(n, HISTORY, dim, device=device)
        self.y = torch.zeros(n, HISTORY, dim, device=device)
        self.rho = torch.zeros(n, HISTORY, device=device)

    def clear(self, rows: torch.Tensor) -> None:
        self.s[rows], self.y[rows], self.rho[rows] = 0.0, 0.0, 0.0

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
