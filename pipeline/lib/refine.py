"""The codec's encoder-side latent refinement: a slower, better encoder for the same decoder and stream.

codec.refine_steps > 0 in params.yaml turns it on for `codec compress` (uint8 and uint8_range streams) and for
evaluate, which share this code path; the model's weights never move. Each image's latent is searched on its own
log MSE through the fixed decoder (pipeline.lib.search_decoder's copy), inside the uint8 grid's box.
codec.refine_method lbfgs (the default): L-BFGS with each image's own curvature history, measured in grid cells, an
image stopping once its steps fall below codec.refine_tol cells; adam: a fixed number of Adam steps (the first
method, kept for comparison).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from pipeline.lib.device import as_batch_tensor
from pipeline.lib.losses import log_mse_per_image
from pipeline.lib.quantize import uint8_scale
from pipeline.lib.search_decoder import inference_decoder

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

    def load(first: int, count: int) -> torch.Tensor:
        x = as_batch_tensor(images[first : first + count], device)
        return (x.flip(-2, -1) if mirrored else x).contiguous(memory_format=torch.channels_last)

    starts = latents.to(device).float().clamp(*box)
    search = _lbfgs if cfg.refine_method == "lbfgs" else _adam
    bar = tqdm(total=len(images), desc=f"refine latents ({cfg.refine_method})", unit="image", mininterval=1.0)
    with torch.enable_grad(), bar:
        return search(decoder, load, starts, box, uint8_scale(*calibration).to(device), cfg, bar.update).cpu()


def _loss_and_grad(decoder, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's log MSE at its latent, and its gradient (the sum's gradient: images do not interact)."""
    z = z.detach().requires_grad_(True)
    loss = log_mse_per_image(decoder(z).float(), x)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad


def _adam(decoder, load, starts, box, cell, cfg, progress) -> torch.Tensor:
    """cfg.refine_steps Adam steps at rate cfg.refine_lr, REFINE_BATCH images together."""
    refined = []
    for first in range(0, len(starts), REFINE_BATCH):
        x = load(first, REFINE_BATCH)
        z = starts[first : first + REFINE_BATCH].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=cfg.refine_lr)
        for _ in range(cfg.refine_steps):
            z.grad = _loss_and_grad(decoder, x, z)[1]
            optimizer.step()
            with torch.no_grad():
                z.clamp_(*box)
        refined.append(z.detach())
        progress(len(x))
    return torch.cat(refined)


def _lbfgs(decoder, load, starts, box, cell, cfg, progress) -> torch.Tensor:
    """At most cfg.refine_steps L-BFGS steps per image, in grid-cell units (so the tolerance and the first step are
    in the stream's own resolution). A step that fails the Armijo test is retried at half the length; an image stops
    once its next step would move no dimension by cfg.refine_tol cells, without taking it. Each step is one decoder
    pass forward and back. REFINE_BATCH images search at a time, and an image that stops hands its slot to the next,
    whose first pass joins the others' steps: the passes stay full batches until the images run out (a batch that
    waited for its slowest image ran ever smaller passes, which cost more per image)."""
    lo, top = box[0], (box[1] - box[0]) / cell
    slots = _Slots(min(REFINE_BATCH, len(starts)), starts.shape[1], lo.device)
    refined, queued = starts.clone(), 0
    while True:
        rows = slots.occupied()
        trial = torch.clamp(
            slots.u[rows] + slots.length[rows, None] * slots.direction(rows), torch.zeros_like(top), top
        )
        stop = ((trial - slots.u[rows]).abs().amax(1) < cfg.refine_tol) | (slots.trials[rows] >= cfg.refine_steps)
        done = rows[stop]
        refined[slots.owner[done]] = (lo + slots.u[done] * cell).clamp(*box)  # without float overshoot past the box
        slots.owner[done] = -1
        progress(len(done))
        rows, trial = rows[~stop], trial[~stop]
        new = slots.free()[: len(starts) - queued]
        slots.fill(new, load(queued, len(new)), (starts[queued : queued + len(new)] - lo) / cell, queued)
        queued += len(new)
        if len(rows) + len(new) == 0:
            return refined
        measured = torch.cat([new, rows])
        loss, grad = _loss_and_grad(decoder, slots.x[measured], lo + torch.cat([slots.u[new], trial]) * cell)
        slots.loss[new], slots.grad[new] = loss[: len(new)], grad[: len(new)] * cell
        slots.step(rows, trial, loss[len(new) :], grad[len(new) :] * cell)


class _Slots:
    """The L-BFGS state of the images being refined, one slot each, in grid-cell units; owner: the image's index,
    -1 for a free slot."""

    def __init__(self, n: int, dim: int, device):
        self.owner = torch.full((n,), -1, dtype=torch.long, device=device)
        self.x: torch.Tensor | None = None  # the images, shaped as the first ones loaded
        self.u, self.grad = torch.zeros(n, dim, device=device), torch.zeros(n, dim, device=device)
        self.loss, self.length = torch.zeros(n, device=device), torch.ones(n, device=device)
        self.trials = torch.zeros(n, dtype=torch.long, device=device)
        self.history = _Curvature(n, dim, device)

    def occupied(self) -> torch.Tensor:
        return (self.owner >= 0).nonzero().squeeze(1)

    def free(self) -> torch.Tensor:
        return (self.owner < 0).nonzero().squeeze(1)

    def direction(self, rows: torch.Tensor) -> torch.Tensor:
        return self.history.direction(rows, self.grad[rows])

    def fill(self, rows: torch.Tensor, x: torch.Tensor, u: torch.Tensor, first: int) -> None:
        """New images (first: the index of the first) into free slots, with the searches' first points."""
        if self.x is None:
            self.x = x.new_zeros(len(self.owner), *x.shape[1:])
        self.x[rows], self.u[rows] = x, u
        self.owner[rows] = torch.arange(first, first + len(rows), device=rows.device)
        self.length[rows], self.trials[rows] = 1.0, 0
        self.history.clear(rows)

    def step(self, rows, trial, trial_loss, trial_grad) -> None:
        """Each searching image's trial: taken if it passes the Armijo test, else the next one is half as long."""
        step = trial - self.u[rows]
        taken = trial_loss <= self.loss[rows] + ARMIJO * (self.grad[rows] * step).sum(1)
        moved = rows[taken]
        self.history.add(moved, step[taken], trial_grad[taken] - self.grad[moved])
        self.u[moved], self.loss[moved], self.grad[moved] = trial[taken], trial_loss[taken], trial_grad[taken]
        self.length[moved] = 1.0
        self.length[rows[~taken]] /= 2
        self.trials[rows] += 1


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
