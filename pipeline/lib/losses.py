"""Training objectives: train.loss -> objective(recon, x). The pooled MSE is tracked beside any of them."""

from __future__ import annotations

import torch

from pipeline.lib import ssim
from pipeline.lib.io import DataError


def log_mse_per_image(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log(per-image MSE + 1e-5), shape (N,): the floor (50 dB) stops near-perfect images from dominating."""
    return torch.log(torch.nn.functional.mse_loss(recon, x, reduction="none").flatten(1).mean(1) + 1e-5)


def log_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over images of log(per-image MSE + 1e-5): minimising it maximises the mean per-image PSNR."""
    return log_mse_per_image(recon, x).mean()


def log_mse_ssim(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log_mse plus the mean over images of log(1 - SSIM + 1e-4), SSIM with the study's uniform 11x11 window (the
    default evaluate.ssim_window; fixed here so that train depends on no evaluate key): a scale-free sum, so a 10%
    smaller error counts the same in either term. The floor plays log_mse's role."""
    dissimilarity = 1 - ssim.ssim_per_image(x, recon, "uniform").float()
    return log_mse(recon, x) + torch.log(dissimilarity + 1e-4).mean()


OBJECTIVES = {"mse": torch.nn.functional.mse_loss, "log_mse": log_mse, "log_mse_ssim": log_mse_ssim}


def objective(loss: str, where: str):
    """The objective named `loss`; a clear error for one this version does not know (an old or foreign file)."""
    if loss not in OBJECTIVES:
        raise DataError(
            f"{where}: trained on loss {loss!r}, which this version does not know "
            f"(one of {', '.join(OBJECTIVES)}); retrain it with this version"
        )
    return OBJECTIVES[loss]
