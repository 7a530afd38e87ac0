"""DVC stage `baselines`: classical compressors on the same test images the variants are evaluated on.

PCA fitted on the train split (coefficients as float32, and as uint8 on a grid calibrated on train, like
the latents), JPEG and WebP over a range of qualities and lossless PNG (Pillow, one file per image, all
headers included), and gzip (level 9) of the whole test set as one raw uint8 array. Writes
reports/baselines.json: rows of method, setting, bytes_per_image and the evaluate stage's metrics.
The report stage puts them on the rate-distortion figure beside the variants.
"""
from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline import codec, data, metrics
from pipeline.cli import run_stage
from pipeline.config import REPO_ROOT, Params
from pipeline.prepare import PREPARED_DIR

OUT_FILE = REPO_ROOT / "reports" / "baselines.json"
IMAGE_BYTES = 28 * 28


def row(method: str, setting: str, bytes_per_image: float, originals: np.ndarray, decoded: np.ndarray,
        window: str) -> dict:
    """One rate-distortion point; PSNR is None (JSON null) for a lossless codec, where it is infinite."""
    x, y = (torch.from_numpy(a).float().div(255) for a in (originals, decoded))
    s = metrics.summarize(x, y, window=window)
    lossless = s["mse"] == 0
    return {"method": method, "setting": setting, "bytes_per_image": bytes_per_image,
            "psnr_pooled": None if lossless else s["psnr_pooled"], "psnr": None if lossless else s["psnr"],
            "ssim": s["ssim"], "mse": s["mse"]}


def pillow_codec(images: np.ndarray, fmt: str, **options) -> tuple[float, np.ndarray]:
    """Each image saved as its own file in `fmt`, and read back: (mean bytes per file, decoded images)."""
    sizes, decoded = [], []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt, **options)
        sizes.append(buffer.tell())
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L")))
    return float(np.mean(sizes)), np.stack(decoded)


def pca_rows(train: np.ndarray, test: np.ndarray, dims: list[int], window: str) -> list[dict]:
    train_x, test_x = _flat(train), _flat(test)
    mean = train_x.mean(0)
    components = torch.linalg.svd(train_x - mean, full_matrices=False).Vh  # rows: principal directions
    if max(dims) > len(components):
        raise data.DataError(f"rate_distortion.pca_dims: {max(dims)} dimensions need at least as many train images "
                             f"(the train split has {len(train)})")
    rows = []
    for dim in dims:
        basis = components[:dim]
        coefficients, train_coefficients = (((x - mean) @ basis.T).float() for x in (test_x, train_x))
        lo, hi = codec.calibrate_uint8(train_coefficients)
        quantised = codec.dequantize_uint8(codec.uint8_codes(coefficients, lo, hi), lo, hi)
        side = 8 * dim / len(test)  # the uint8 grid (lo, hi per dimension), as the latent streams carry it
        for method, size, c in (("pca", 4.0 * dim, coefficients), ("pca-uint8", dim + side, quantised)):
            decoded = codec.to_uint8((c.double() @ basis + mean).float())
            rows.append(row(method, f"{dim} dims", size, test, decoded, window))
    return rows


def _flat(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.reshape(len(images), -1)).double().div(255)


def compute_baselines(params: Params, prepared: Path = PREPARED_DIR) -> list[dict]:
    cfg, window = params.rate_distortion, params.evaluate.ssim_window
    train, test = data.load_split(prepared, "train")[0], data.load_split(prepared, "test")[0]
    rows = pca_rows(train, test, cfg.pca_dims, window)
    jobs = [("jpeg", f"quality {q}", "JPEG", {"quality": q}) for q in cfg.jpeg_qualities]
    jobs += [("webp", f"quality {q}", "WEBP", {"quality": q, "method": 6}) for q in cfg.webp_qualities]
    jobs += [("png", "lossless, optimize", "PNG", {"optimize": True})]
    for method, setting, fmt, options in tqdm(jobs, desc="baselines", unit="codec setting"):
        size, decoded = pillow_codec(test, fmt, **options)
        rows.append(row(method, setting, size, test, decoded, window))
    gz = gzip.compress(test.tobytes(), compresslevel=9, mtime=0)
    rows.append(row("gzip", "whole test set, level 9", len(gz) / len(test), test, test, window))
    return rows


def write_baselines(params: Params, prepared: Path = PREPARED_DIR, out: Path = OUT_FILE) -> list[dict]:
    rows = compute_baselines(params, prepared)
    result = {"n_test": int(len(data.load_split(prepared, "test")[0])), "ssim_window": params.evaluate.ssim_window,
              "data_manifest_sha256": data.manifest_digest(prepared), "rows": rows}
    data.atomic_write(out, lambda p: p.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n"))
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_stage("baselines", __doc__, lambda params: f"wrote {len(write_baselines(params))} rows to {OUT_FILE}",
                     argv, per_run=False, expected=(data.DataError,))


if __name__ == "__main__":
    sys.exit(main())
