"""Time pipeline.lib.metrics.summarize against a per-image scikit-image loop, side by side in one run.

Run from the repo root:  python -m benchmarks.bench_metrics [--n 18800] [--window uniform|gaussian]
Uses the real EMNIST test images from ../shared/data when present (else uniform random images), with
reconstructions made by a slight blur plus noise, clipped to [0, 1].
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

from benchmarks.arguments import positive
from pipeline.lib import metrics

REAL_IMAGES = (
    Path(__file__).resolve().parents[1].parent / "shared/data/emnist-bymerge-test-resplit/test-images-idx3-ubyte.gz"
)
SSIM_KW = {
    "uniform": {"win_size": 11},
    "gaussian": {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
}


def load_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(reference, reconstruction, source) as float32 arrays of shape (n, 28, 28) in [0, 1]."""
    rng = np.random.default_rng(seed)
    if REAL_IMAGES.exists():
        from pipeline.lib.idx import read_idx

        raw = read_idx(REAL_IMAGES, "images")
        x = raw[np.arange(n) % len(raw)].transpose(0, 2, 1).astype(np.float32) / 255  # upright
        source = f"real EMNIST test images ({REAL_IMAGES.name}, {len(raw)} available)"
    else:
        x = rng.random((n, 28, 28), dtype=np.float32)
        source = "random images (real data not found)"
    y = gaussian_filter(x, sigma=(0, 0.7, 0.7)) + rng.normal(0, 0.05, x.shape).astype(np.float32)
    return x, np.clip(y, 0, 1).astype(np.float32), source


def skimage_loop(x: np.ndarray, y: np.ndarray, window: str) -> dict[str, np.ndarray]:
    """The reference: one structural_similarity + peak_signal_noise_ratio call per image (float64)."""
    ssim, psnr = np.empty(len(x)), np.empty(len(x))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in tqdm(range(len(x)), desc="skimage loop", unit="img"):
            a, b = x[i].astype(np.float64), y[i].astype(np.float64)
            ssim[i] = structural_similarity(a, b, data_range=1.0, **SSIM_KW[window])
            psnr[i] = peak_signal_noise_ratio(a, b, data_range=a.max() - a.min())
    return {"ssim": ssim, "psnr": psnr}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive, default=18_800, help="number of image pairs")
    parser.add_argument("--window", choices=metrics.WINDOWS, default="uniform")
    parser.add_argument("--batch-size", type=positive, default=2048)
    args = parser.parse_args()

    x, y, source = load_pairs(args.n)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    print(f"{args.n} pairs from {source}; window={args.window}; torch threads={torch.get_num_threads()}")

    t0 = time.perf_counter()
    summary = metrics.summarize(tx, ty, args.window, args.batch_size)
    t_torch = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = skimage_loop(x, y, args.window)
    t_sk = time.perf_counter() - t0

    ours = {k: v.numpy() for k, v in metrics.per_image(tx, ty, args.window, args.batch_size).items()}
    finite = np.isfinite(ref["psnr"])
    assert np.array_equal(finite, np.isfinite(ours["psnr"])), "non-finite PSNR differs from skimage"
    print(f"torch summarize : {t_torch:8.3f} s   {summary}")
    print(f"skimage loop    : {t_sk:8.3f} s   ssim={ref['ssim'].mean():.6f} psnr={ref['psnr'][finite].mean():.6f}")
    print(f"speed-up        : {t_sk / t_torch:8.1f}x")
    print(f"max |diff| ssim : {np.abs(ours['ssim'] - ref['ssim']).max():.3e}")
    print(f"max |diff| psnr : {np.abs(ours['psnr'] - ref['psnr'])[finite].max():.3e} (finite values)")


if __name__ == "__main__":
    main()
