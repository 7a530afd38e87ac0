"""The evaluate stage's measurements of one trained model on the whole test split, plus the study's protocol.

Everything in the result is a deterministic function of data, model weights and params, except its "run" block
(timings, file digests, and what the caller adds: provenance, tracking run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from pipeline.lib import codec, encoding, metrics, prepared, refine
from pipeline.lib.classifier import accuracy, load_classifier
from pipeline.lib.config import EvaluateConfig, Params
from pipeline.lib.device import as_batch_tensor, batched, configure_compute, pick_device
from pipeline.lib.io import DataError, sha256_file
from pipeline.lib.losses import objective
from pipeline.lib.models import is_collapsed, load_model, training_flops_per_image
from pipeline.lib.quantize import to_uint8

IMAGE_BYTES = 28 * 28  # one uint8 image


def summary(x: torch.Tensor, y: torch.Tensor, cfg: EvaluateConfig, suffix: str = "") -> dict[str, float]:
    s = metrics.summarize(x, y, window=cfg.ssim_window, batch_size=cfg.batch_size)
    return {f"{k}{suffix}": v for k, v in s.items()}


class Evaluation(NamedTuple):
    metrics: dict  # the metrics JSON (pipeline.lib.schema)
    per_class: pd.DataFrame
    originals: np.ndarray  # the report's sample test images, uint8
    samples: np.ndarray  # their reconstructions, uint8
    trained_run_id: str | None  # the tracking run that trained the model, as its file records it


def evaluate_model(
    params: Params,
    variant: str,
    seed: int,
    model_path: Path,
    prepared_dir: Path,
    final_losses: dict,
    classifier_file: Path,
) -> Evaluation:
    """final_losses: the training's last train_loss, val_loss and epochs (final_losses(history_csv) for a run)."""
    cfg, compute = params.evaluate, params.compute_for(variant)
    device = pick_device(compute.device)
    configure_compute(compute.threads)  # codec.refine_steps runs backward passes
    model, saved = load_model(model_path, device)
    training_objective = objective(saved["train"].get("loss", "mse"), str(model_path))  # before the slow part
    images, labels = prepared.load_split(prepared_dir, "test")
    x = as_batch_tensor(images, device).contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    recon, latents, recon_decoder, per_image = reconstruct_and_measure(model, x, cfg, progress=True)
    result = {**metrics.summarize_per_image(per_image), **summary(x, recon_decoder, cfg, "_decoder")}
    seconds = time.perf_counter() - started
    result["max_abs_diff_decoder"] = float((recon - recon_decoder).abs().max())
    result.update(output_spread(recon))
    calibration = encoding.saved_calibration(model, saved, prepared_dir)
    compression, refine_seconds = _compression(model, model_path, latents, images, x, calibration, params)
    result.update(compression)
    result.update(latent_diagnostics(latents), train_flops_per_image=_train_flops(model, saved, training_objective))
    result.update(_semantic_fidelity(classifier_file, recon, labels, device))
    result.update(final_losses)
    protocol = np.random.default_rng(cfg.protocol_seed).choice(len(x), cfg.protocol_images, replace=False)
    result["seed_protocol"] = {
        "indices": sorted(protocol.tolist()),
        **summary(x[protocol], recon[protocol], cfg),
        **summary(x[protocol], recon_decoder[protocol], cfg, "_decoder"),
    }
    per_class = _per_class(per_image, labels, prepared.load_mapping(prepared_dir))
    samples = _sample_indices(len(x), cfg)
    result.update(
        variant=variant,
        seed=seed,
        n_test=len(x),
        ssim_window=cfg.ssim_window,
        sample_indices=samples.tolist(),
        per_class=per_class.to_dict(orient="records"),
        data_manifest_sha256=saved["data_manifest_sha256"],
    )
    result["run"] = {
        "eval_seconds": seconds,
        "images_per_s": len(x) / seconds,
        "refine_seconds": refine_seconds,
        "model_sha256": sha256_file(model_path),
    }
    return Evaluation(result, per_class, images[samples], to_uint8(recon[samples]), saved.get("mlflow_run_id"))


def _train_flops(model, saved: dict, training_objective) -> int:
    """The model file's count from its training, or, for a file written before training stored it, counted now."""
    if "train_flops_per_image" in saved:
        return saved["train_flops_per_image"]
    return training_flops_per_image(model.spec, objective=training_objective)


def reconstruct_and_measure(model, x: torch.Tensor, cfg: EvaluateConfig, progress: bool = False):
    """The full autoencoder and encoder->decoder run separately on x, and the autoencoder's per-image metrics.
    progress: a bar per pass."""
    bars = ("evaluate: autoencoder", "evaluate: encoder", "evaluate: decoder") if progress else (None,) * 3
    recon = batched(model, x, cfg.batch_size, bars[0])
    latents = batched(model.encode, x, encoding.BATCH, bars[1])  # codec compress's batches: its streams start here
    recon_decoder = batched(model.decode, latents, cfg.batch_size, bars[2])
    return recon, latents, recon_decoder, metrics.per_image(x, recon, cfg.ssim_window, cfg.batch_size)


def output_spread(recon: torch.Tensor) -> dict:
    """The largest range of any output pixel over the test images, and whether it is so small that the model
    decodes every image to the same one (collapsed, as training's warning says of the val images)."""
    output_range = float((recon.amax(0) - recon.amin(0)).max())
    return {"output_range": output_range, "collapsed": is_collapsed(output_range, len(recon))}


def _compression(model, model_path: Path, latents, images, x, calibration, params: Params) -> tuple[dict, float]:
    """Real streams of the test images, made as `codec compress` makes them: bytes per image with headers and side
    information, the quality decoded from them, and the seconds spent refining. uint8 and uint8_range for every
    variant (calibration: their grid, from the train split), from latents refined when codec.refine_steps > 0 (their
    float quality is then *_refined); the entropy-coded stream for variants with a learned prior."""
    cfg, latents = params.evaluate, latents.float().cpu()
    started = time.perf_counter()
    coded = refine.refine_latents(model, images, latents, params.codec, calibration)
    refine_seconds, steps = time.perf_counter() - started, refine.applied_refine_steps(model, params.codec)
    dim = latents.shape[1]
    result = {
        "latent_dim": dim,
        "bytes_per_image_float32": 4 * dim,
        "compression_ratio_float32": IMAGE_BYTES / (4 * dim),
        **_uint8_form(model, model_path, coded, calibration, x, cfg),
        "refine_steps": steps,
    }
    if steps:
        result.update(
            summary(x, batched(model.decode, coded.to(x.device), cfg.batch_size), cfg, "_refined"),
            refine_method=params.codec.refine_method,
            refine_tol=params.codec.refine_tol,
            refine_lr=params.codec.refine_lr,
        )
    if model.prior is not None:
        result.update(_entropy_form(model, model_path, latents, x))
    return result, refine_seconds


def _uint8_form(model, model_path: Path, latents, calibration, x, cfg: EvaluateConfig) -> dict:
    """The uint8 stream and its range-coded form (uint8_range): the same codes, so one quality for both."""
    streams = {mode: codec.pack(model, model_path, latents, mode, calibration) for mode in ("uint8", "uint8_range")}
    restored = {mode: codec.unpack(model, model_path, stream)[1] for mode, stream in streams.items()}
    if not torch.equal(restored["uint8"], restored["uint8_range"]):
        raise codec.CodecError(f"{model_path}: the uint8_range stream does not decode to the uint8 stream's latents")
    decoded = batched(model.decode, restored["uint8"].to(x.device), cfg.batch_size, "evaluate: uint8 stream")
    sizes = {
        f"{kind}_{mode}": value
        for mode, stream in streams.items()
        for kind, value in (
            ("bytes_per_image", len(stream) / len(x)),
            ("compression_ratio", IMAGE_BYTES * len(x) / len(stream)),
        )
    }
    return {**sizes, **summary(x, decoded, cfg, "_uint8")}


def _entropy_form(model, model_path: Path, latents, x) -> dict:
    """The range-coded stream of integer latents: its quality is the autoencoder's (the same latents)."""
    stream, n = codec.pack(model, model_path, latents, "entropy"), len(latents)
    if not torch.equal(codec.unpack(model, model_path, stream)[1], latents):
        raise codec.CodecError(f"{model_path}: the entropy-coded stream does not decode to its latents")
    with torch.no_grad():
        model_bits = float(model.prior.bits(latents.to(x.device)).mean())
    return {
        "bytes_per_image_entropy": len(stream) / n,
        "compression_ratio_entropy": IMAGE_BYTES * n / len(stream),
        "prior_bits_per_image": model_bits,
        "bytes_per_image_entropy_standalone": float(codec.standalone_entropy_bytes(model, latents).mean()),
    }


def _semantic_fidelity(classifier_file: Path, recon: torch.Tensor, labels: np.ndarray, device) -> dict:
    """The classifier stage's test accuracy on the reconstructions, beside its accuracy on the originals."""
    model, saved = load_classifier(classifier_file, device)
    return {
        "classifier_accuracy": accuracy(model, recon, labels),
        "classifier_accuracy_originals": saved["test_accuracy"],
    }


def latent_diagnostics(latents: torch.Tensor, variance_share: float = 0.99) -> dict:
    """Dead units (0 for every image), active units per image, and the dimensions holding 99% of the variance."""
    latents = latents.double()
    dead = (latents == 0).all(0)
    eigenvalues = torch.linalg.eigvalsh(torch.cov(latents.T)).flip(0).clamp(min=0)
    total = float(eigenvalues.sum())
    effective = int((eigenvalues.cumsum(0) / total < variance_share).sum()) + 1 if total > 0 else 0
    return {
        "dead_latent_units": int(dead.sum()),
        "active_latent_units_per_image": float((latents != 0).sum(1).double().mean()),
        "effective_latent_dims": effective,
        "latent_units": {
            "mean": latents.mean(0).tolist(),
            "std": latents.std(0).tolist(),
            "active_fraction": (latents != 0).double().mean(0).tolist(),
            "dead": dead.tolist(),
        },
    }


def final_losses(history_csv: Path) -> dict:
    try:
        last = pd.read_csv(history_csv).iloc[-1]
    except FileNotFoundError:
        raise DataError(f"{history_csv}: missing; run the train stage first") from None
    return {"train_loss": float(last.train_loss), "val_loss": float(last.val_loss), "epochs": int(last.epoch)}


def _per_class(per_image: dict[str, torch.Tensor], labels: np.ndarray, mapping: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({k: v.cpu().numpy() for k, v in per_image.items()})
    frame["label"] = labels
    table = (
        frame.groupby("label")
        .agg(mse=("mse", "mean"), psnr=("psnr", "mean"), ssim=("ssim", "mean"), n=("mse", "size"))
        .reset_index()
    )
    table.insert(1, "char", [mapping[i] for i in table.label])
    return table


def _sample_indices(n: int, cfg: EvaluateConfig) -> np.ndarray:
    """The same test images for every variant, so the report's grids line up."""
    return np.sort(np.random.default_rng(cfg.protocol_seed + 1).choice(n, min(cfg.grid_images, n), replace=False))
