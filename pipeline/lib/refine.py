"""The codec's encoder-side latent refinement: a slower, better encoder for the same decoder and stream.

codec.refine_steps > 0 in params.yaml turns it on for `codec compress` (uint8 and uint8_range streams) and for
evaluate, which share this code path; the model's weights never move.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from pipeline.lib.device import as_batch_tensor
from pipeline.lib.losses import log_mse

REFINE_BATCH = 256  # faster per image and step on CPU than larger batches (reports/results/README.md)


def applied_refine_steps(model, cfg) -> int:
    """codec.refine_steps, or 0 for an entropy-coded variant: its integer latents are not refined."""
    return 0 if model.prior is not None else cfg.refine_steps


def refine_latents(model, images: np.ndarray, latents: torch.Tensor, cfg, calibration) -> torch.Tensor:
    """The encoder-side search (cfg: config.CodecConfig): each image's latent takes cfg.refine_steps Adam
    steps on its own log MSE through the fixed decoder, kept inside the uint8 grid's box (calibration: (lo, hi)).
    The model's weights do not move and the decoder is unchanged, so the uint8 stream carries the result as it
    would the encoder's. Variants with an entropy-coded (integer) latent keep the encoder's latents."""
    if applied_refine_steps(model, cfg) == 0 or len(images) == 0:
        return latents
    if model.training:  # batch norm would mix the images of a batch and move its running statistics
        raise ValueError("refine_latents needs a model in eval mode (load_model gives one)")
    device = next(model.parameters()).device
    lo, hi = (torch.from_numpy(bound).to(device) for bound in calibration)
    refined = []
    with (
        torch.enable_grad(),
        tqdm(
            total=cfg.refine_steps * len(images),
            desc="refine latents",
            unit="image-step",
            unit_scale=True,
            mininterval=1.0,
        ) as bar,
    ):
        for i in range(0, len(images), REFINE_BATCH):
            x = as_batch_tensor(images[i : i + REFINE_BATCH], device).contiguous(memory_format=torch.channels_last)
            z = latents[i : i + REFINE_BATCH].to(device).clamp(lo, hi).requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=cfg.refine_lr)
            for _ in range(cfg.refine_steps):
                # a sum over images (log_mse is their mean): each latent follows its own image's error (up to
                # float rounding, which depends on the batch an image shares)
                (z.grad,) = torch.autograd.grad(log_mse(model.decode(z).float(), x) * len(x), z)
                optimizer.step()
                with torch.no_grad():
                    z.clamp_(lo, hi)
                bar.update(len(x))
            refined.append(z.detach().float().cpu())
    return torch.cat(refined)
