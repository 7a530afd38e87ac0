"""Batched image-quality metrics (MSE, PSNR, SSIM) in torch, matching scikit-image 0.26.

All metrics are computed in float64 on the inputs' device. Inputs are a reference batch `x` and a
reconstruction batch `y` of shape (N, 1, H, W) or (N, H, W), values in [0, 1]. SSIM lives in pipeline/lib/ssim.py
(see there for how it reproduces `skimage.metrics.structural_similarity`) and is re-exported here.
"""

from __future__ import annotations

import math

import torch

from pipeline.lib.ssim import WINDOWS, image_pairs, ssim_per_image

__all__ = [
    "WINDOWS",
    "mse_per_image",
    "psnr_per_image",
    "psnr_pooled",
    "ssim_per_image",
    "per_image",
    "summarize",
    "summarize_per_image",
]


def mse_per_image(x, y) -> torch.Tensor:
    """Mean squared error of each image pair, shape (N,)."""
    x, y = image_pairs(x, y)
    return (x - y).square().flatten(1).mean(1)


def psnr_per_image(x, y) -> torch.Tensor:
    """Per-image PSNR with data range max(x_i) - min(x_i) of the reference, as skimage computes it.

    Non-finite cases follow skimage's 10*log10(range**2 / mse) exactly: +inf when mse == 0 and the
    range is positive (perfect reconstruction), -inf for a constant reference with mse > 0, and nan
    for a constant reference reproduced exactly.
    """
    x, y = image_pairs(x, y)
    flat = x.flatten(1)
    data_range = flat.amax(1) - flat.amin(1)
    return 10 * torch.log10(data_range.square() / mse_per_image(x, y))


def psnr_pooled(mse: float) -> float:
    """PSNR of a pooled MSE with data range 1: 10*log10(1/mse); inf when mse == 0."""
    if mse < 0:
        raise ValueError(f"mse must be >= 0, got {mse}")
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def per_image(x, y, window: str = "uniform", batch_size: int = 2048) -> dict[str, torch.Tensor]:
    """Per-image float64 tensors "mse", "psnr", "ssim" of shape (N,), computed batch_size pairs at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    parts: dict[str, list[torch.Tensor]] = {"mse": [], "psnr": [], "ssim": []}
    for start in range(0, x.shape[0], batch_size):
        xb, yb = image_pairs(x[start : start + batch_size], y[start : start + batch_size])
        parts["mse"].append(mse_per_image(xb, yb))
        parts["psnr"].append(psnr_per_image(xb, yb))
        parts["ssim"].append(ssim_per_image(xb, yb, window))
    empty = torch.empty(0, dtype=torch.float64, device=x.device)
    return {name: torch.cat(vals) if vals else empty for name, vals in parts.items()}


def summarize(x, y, window: str = "uniform", batch_size: int = 2048) -> dict[str, float]:
    """Dataset-level metrics as floats.

    "mse": pooled over all pixels (= mean of per-image MSE, all images have the same size);
    "psnr_pooled": psnr_pooled(mse); "ssim": mean per-image SSIM;
    "psnr": mean per-image PSNR (study definition) over the finite values only;
    "psnr_inf_images": images with PSNR = +inf (exact reconstructions), left out of "psnr";
    "psnr_undefined_images": images with a constant reference and PSNR -inf or nan, left out of "psnr".
    """
    return summarize_per_image(per_image(x, y, window, batch_size))


def summarize_per_image(m: dict[str, torch.Tensor]) -> dict[str, float]:
    """summarize() from per-image tensors already computed by per_image()."""
    if m["mse"].numel() == 0:
        raise ValueError("no images to summarize")
    psnr = m["psnr"]
    finite = torch.isfinite(psnr)
    mse = m["mse"].mean().item()
    return {
        "mse": mse,
        "psnr": psnr[finite].mean().item() if finite.any() else math.nan,
        "psnr_pooled": psnr_pooled(mse),
        "ssim": m["ssim"].mean().item(),
        "psnr_inf_images": int((psnr == math.inf).sum().item()),
        "psnr_undefined_images": int((~finite & (psnr != math.inf)).sum().item()),
    }
