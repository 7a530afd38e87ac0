"""Batched SSIM in torch, matching scikit-image 0.26's `structural_similarity` with `data_range=1`.

Its own module so that train (whose log_mse_ssim objective uses it) depends on SSIM alone, not on every metric.
Inputs are a reference batch `x` and a reconstruction batch `y` of shape (N, 1, H, W) or (N, H, W), values in
[0, 1]; computed in float64 on the inputs' device.
  - "uniform":  win_size=11, use_sample_covariance=True (variances scaled by 121/120);
  - "gaussian": gaussian_weights=True, sigma=1.5, use_sample_covariance=False. skimage then uses
    scipy's gaussian_filter with truncate=3.5, i.e. radius int(3.5*1.5+0.5)=5: an 11-tap kernel
    exp(-k^2/(2 sigma^2)) normalised to sum 1, and crops the same 5-pixel border.
skimage filters the full image (scipy 'reflect' boundary) and then averages the SSIM map only over
the interior, cropping (win_size-1)//2 pixels per side. Every interior output only reads pixels inside
the image, so a 'valid' (unpadded) separable filter gives the same map.
"""

from __future__ import annotations

import torch

WINDOWS = ("uniform", "gaussian")
K1, K2 = 0.01, 0.03
UNIFORM_SIZE = 11
GAUSS_SIGMA, GAUSS_TRUNCATE = 1.5, 3.5


def image_pairs(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and return float64 (N, 1, H, W) tensors."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x.unsqueeze(1), y.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) or (N, H, W), got {tuple(x.shape)}")
    return x.to(torch.float64), y.to(torch.float64)


def _kernel_1d(window: str, device) -> torch.Tensor:
    """The 1-D window skimage (scipy.ndimage) applies along each axis."""
    if window == "uniform":
        return torch.full((UNIFORM_SIZE,), 1.0 / UNIFORM_SIZE, dtype=torch.float64, device=device)
    if window == "gaussian":
        radius = int(GAUSS_TRUNCATE * GAUSS_SIGMA + 0.5)
        k = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
        phi = torch.exp(-0.5 / GAUSS_SIGMA**2 * k.square())
        return phi / phi.sum()
    raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")


def _band(k: torch.Tensor, size: int) -> torch.Tensor:
    """(size - len(k) + 1, size) matrix whose row i holds k at columns i .. i + len(k) - 1."""
    n_out = size - k.numel() + 1
    cols = torch.arange(n_out, device=k.device)[:, None] + torch.arange(k.numel(), device=k.device)
    band = torch.zeros(n_out, size, dtype=k.dtype, device=k.device)
    return band.scatter_(1, cols, k.expand(n_out, -1))


def _filter_valid(maps: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of the last two dims with 1-D kernel k, as two banded matmuls.

    Same numbers as a 'valid' conv2d with the kernel outer(k, k), but float64 matmul is ~8x faster on CPU. torch's
    FLOP counter counts these dense band matrices, zeros included, so a FLOP budget overstates SSIM's cost.
    """
    rows, cols = _band(k, maps.shape[-2]), _band(k, maps.shape[-1])
    return rows @ maps @ cols.T


def ssim_per_image(x, y, window: str = "uniform") -> torch.Tensor:
    """Mean SSIM of each image pair over the cropped interior, shape (N,); see the module docstring."""
    x, y = image_pairs(x, y)
    k = _kernel_1d(window, x.device)
    if min(x.shape[-2:]) < k.numel():
        raise ValueError(f"images {tuple(x.shape[-2:])} are smaller than the {k.numel()}-pixel window")
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), k)
    ux, uy, uxx, uyy, uxy = stats.unbind(1)
    n_win = k.numel() ** 2
    cov_norm = n_win / (n_win - 1) if window == "uniform" else 1.0
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = K1**2, K2**2  # data_range = 1
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux**2 + uy**2 + c1) * (vx + vy + c2)
    return (num / den).flatten(1).mean(1)
