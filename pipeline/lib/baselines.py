"""Classical compressors on the same test images the variants are evaluated on (the baselines stage).

PCA fitted on the train split (coefficients as float32, and as uint8 on a grid calibrated on train, like
the latents), JPEG and WebP over a range of qualities and lossless PNG (Pillow, one file per image, all
headers included), and gzip (level 9) of the whole test set as one raw uint8 array.
"""

from __future__ import annotations

import functools
import gzip
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.lib import lifetime, metrics, quantize
from pipeline.lib.config import RateDistortionConfig
from pipeline.lib.io import DataError

IMAGE_BYTES = 28 * 28


def row(
    method: str, setting: str, bytes_per_image: float, originals: np.ndarray, decoded: np.ndarray, window: str
) -> dict:
    """One rate-distortion point; PSNR is None (JSON null) for a lossless codec, where it is infinite."""
    x, y = (torch.from_numpy(a).float().div(255) for a in (originals, decoded))
    s = metrics.summarize(x, y, window=window)
    lossless = s["mse"] == 0
    return {
        "method": method,
        "setting": setting,
        "bytes_per_image": bytes_per_image,
        "psnr_pooled": None if lossless else s["psnr_pooled"],
        "psnr": None if lossless else s["psnr"],
        "ssim": s["ssim"],
        "mse": s["mse"],
    }


def pillow_codec(images: np.ndarray, fmt: str, **options) -> tuple[float, np.ndarray]:
    """Each image saved as its own file in `fmt`, and read back: (mean bytes per file, decoded images)."""
    sizes, decoded = [], []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt, **options)
        sizes.append(buffer.tell())
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L")))
    return float(np.mean(sizes)), np.stack(decoded)


_WORKER_IMAGES: np.ndarray | None = None  # a codec worker's test images, set as it starts


@contextmanager
def _codec_pool(workers: int, images: np.ndarray):
    """Processes, not threads: Pillow's per-image Python calls hold the GIL, so threads barely overlap. They fork
    from this process and run only Pillow and numpy. None for 0 workers: the codecs run here. On an error here the
    codec settings not started are cancelled, so the error is not held up behind them."""
    if not workers:
        yield None
        return
    start = (images, os.getpid())
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), _worker_start, start)
    try:
        yield pool
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    pool.shutdown()


def _worker_start(images: np.ndarray, parent: int) -> None:
    """The images arrive once, by the fork. The worker dies with its parent: it holds its own end of the task pipe
    and would otherwise wait on it for ever when the stage is killed."""
    global _WORKER_IMAGES
    _WORKER_IMAGES = images
    lifetime.die_with_parent(parent)


@contextmanager
def _torch_threads(count: int):
    """Torch's threads here leave the cores the codec processes use: its waiting threads spin and slow them
    (reports/results/README.md has the measurement)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _coded(job: tuple, images: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    return pillow_codec(_WORKER_IMAGES if images is None else images, job[2], **job[3])


def _check_pca_dims(dims: list[int], train: np.ndarray) -> None:
    if max(dims, default=0) > len(train):  # the config keeps them within the pixels
        raise DataError(
            f"rate_distortion.pca_dims: {max(dims)} dimensions need at least as many train images "
            f"(the train split has {len(train)})"
        )


def pca_rows(train: np.ndarray, test: np.ndarray, dims: list[int], window: str, bar: tqdm | None = None) -> list[dict]:
    """bar: a progress bar to advance by one per dimension count."""
    _check_pca_dims(dims, train)
    train_x, test_x = _flat(train), _flat(test)
    mean = train_x.mean(0)
    components = torch.linalg.svd(train_x - mean, full_matrices=False).Vh  # rows: principal directions
    rows = []
    for dim in dims:
        basis = components[:dim]
        coefficients, train_coefficients = (((x - mean) @ basis.T).float() for x in (test_x, train_x))
        lo, hi = quantize.calibrate_uint8(train_coefficients)
        quantised = quantize.dequantize_uint8(quantize.uint8_codes(coefficients, lo, hi), lo, hi)
        side = 8 * dim / len(test)  # the uint8 grid (lo, hi per dimension), as the latent streams carry it
        for method, size, c in (("pca", 4.0 * dim, coefficients), ("pca-uint8", dim + side, quantised)):
            decoded = quantize.to_uint8((c.double() @ basis + mean).float())
            rows.append(row(method, f"{dim} dims", size, test, decoded, window))
        if bar is not None:
            bar.update()
    return rows


def _flat(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.reshape(len(images), -1)).double().div(255)


def compute_baselines(
    cfg: RateDistortionConfig,
    window: str,
    train: np.ndarray,
    test: np.ndarray,
    progress: bool = True,
    workers: int | None = None,
) -> list[dict]:
    """Every baseline's rate-distortion rows: PCA (float32, uint8), JPEG, WebP, PNG, gzip. The codecs run in
    `workers` processes (default: torch's thread count) while PCA runs here; 0 runs everything here, one after the
    other. The rows are the same either way."""
    jobs = [("jpeg", f"quality {q}", "JPEG", {"quality": q}) for q in cfg.jpeg_qualities]
    jobs += [("webp", f"quality {q}", "WEBP", {"quality": q, "method": 6}) for q in cfg.webp_qualities]
    jobs += [("png", "lossless, optimize", "PNG", {"optimize": True})]
    _check_pca_dims(cfg.pca_dims, train)
    threads = torch.get_num_threads()
    workers = min(threads if workers is None else workers, len(jobs))
    settings = len(cfg.pca_dims) + len(jobs)  # PCA's first, then the codecs' as they arrive
    bar = tqdm(total=settings, desc="baselines", unit="setting", mininterval=1.0, disable=not progress)
    with _codec_pool(workers, test) as pool, _torch_threads(max(1, threads - workers)), bar:
        # a pool starts every setting at once; a plain map codes each as the loop below reaches it
        coded = pool.map(_coded, jobs) if pool else map(functools.partial(_coded, images=test), jobs)
        rows = pca_rows(train, test, cfg.pca_dims, window, bar)
        for (method, setting, _, _), (size, decoded) in zip(jobs, coded):
            rows.append(row(method, setting, size, test, decoded, window))
            bar.update()
    gz = gzip.compress(test.tobytes(), compresslevel=9, mtime=0)
    rows.append(row("gzip", "whole test set, level 9", len(gz) / len(test), test, test, window))
    return rows
