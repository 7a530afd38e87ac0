"""uint8 quantisation on a per-dimension grid (the codec's uint8 streams, PCA's uint8 baseline), and float images
-> uint8 pixels."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.lib.config import IMAGE_SIZE


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def calibrate_uint8(latents: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension range (lo, hi) of latents, as float32: the uint8 grid spans it."""
    return latents.min(0).values.numpy().astype(np.float32), latents.max(0).values.numpy().astype(np.float32)


def uint8_codes(latents: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    scale = uint8_scale(lo, hi)
    return torch.clamp(torch.round((latents - torch.from_numpy(lo)) / scale), 0, 255).to(torch.uint8).numpy()


def dequantize_uint8(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(codes).float() * uint8_scale(lo, hi) + torch.from_numpy(lo)


def uint8_scale(lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    """The width of one grid cell per dimension (1 for a constant dimension)."""
    lo, hi = torch.from_numpy(lo), torch.from_numpy(hi)
    return torch.where(hi > lo, (hi - lo) / 255, torch.ones_like(hi))
