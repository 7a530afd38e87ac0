"""DVC stage `evaluate@<variant>`: metrics on the whole test split, plus the study's 10-image protocol.

One run per (variant, seed); <run> is `<variant>-seed<seed>`. Writes reports/metrics/<run>.json (DVC
metrics), reports/per_class/<run>.csv (DVC plots) and reports/samples/<run>.npy (reconstructions of the
report's sample images), and logs the same numbers to the training run in MLflow (resumed by the run id
stored in the model file).
"""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from pipeline import classifier, codec, data, dvclock, metrics, refine, tracking
from pipeline.cli import run_stage
from pipeline.config import REPO_ROOT, EvaluateConfig, Params, run_name
from pipeline.models import load_model, training_flops_per_image
from pipeline.prepare import PREPARED_DIR
from pipeline.device import configure_determinism, pick_device
from pipeline.train import HISTORY_DIR, MODELS_DIR, OBJECTIVES, as_batch_tensor

REPORTS_DIR = REPO_ROOT / "reports"
IMAGE_BYTES = 28 * 28  # one uint8 image


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def summary(x: torch.Tensor, y: torch.Tensor, cfg: EvaluateConfig, suffix: str = "") -> dict[str, float]:
    s = metrics.summarize(x, y, window=cfg.ssim_window, batch_size=cfg.batch_size)
    return {f"{k}{suffix}": v for k, v in s.items()}


def evaluate_variant(params: Params, variant: str, seed: int, prepared: Path = PREPARED_DIR,
                     models_dir: Path = MODELS_DIR, history_dir: Path = HISTORY_DIR,
                     reports_dir: Path = REPORTS_DIR, classifier_file: Path = classifier.CLASSIFIER_FILE) -> dict:
    cfg, name = params.evaluate, run_name(variant, seed)
    device = pick_device(params.train_for(variant).device)
    configure_determinism(params.train_for(variant))  # codec.refine_steps runs backward passes
    model_path = models_dir / f"{name}.pt"
    model, saved = load_model(model_path, device)
    objective = _training_objective(saved, model_path)  # checked before the slow part
    images, labels = data.load_split(prepared, "test")
    x = as_batch_tensor(images, device).contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    recon, latents, recon_decoder, per_image = reconstruct_and_measure(model, x, cfg)
    result = {**metrics.summarize_per_image(per_image), **summary(x, recon_decoder, cfg, "_decoder")}
    seconds = time.perf_counter() - started
    result["max_abs_diff_decoder"] = float((recon - recon_decoder).abs().max())
    compression, refine_seconds = _compression(model, model_path, latents, images, x, prepared, params)
    result.update(compression)
    flops = training_flops_per_image(model.spec, objective=objective)
    result.update(latent_diagnostics(latents), train_flops_per_image=flops)
    result.update(_semantic_fidelity(classifier_file, recon, labels, device))
    result.update(_final_losses(history_dir / f"{name}.csv"))
    protocol = np.random.default_rng(cfg.protocol_seed).choice(len(x), cfg.protocol_images, replace=False)
    result["seed_protocol"] = {"indices": sorted(protocol.tolist()), **summary(x[protocol], recon[protocol], cfg),
                               **summary(x[protocol], recon_decoder[protocol], cfg, "_decoder")}
    per_class = _per_class(per_image, labels, json.loads((prepared / "mapping.json").read_text()))
    samples = _sample_indices(len(x), cfg)
    result.update(variant=variant, seed=seed, n_test=len(x), ssim_window=cfg.ssim_window, sample_indices=samples.tolist(),
                  per_class=per_class.to_dict(orient="records"), data_manifest_sha256=saved["data_manifest_sha256"])
    # Everything above is a deterministic function of data, model weights and params; "run" is not.
    upstream = {"prepare": "prepare", "train": dvclock.stage_name("train", variant, seed)}
    result["run"] = {"eval_seconds": seconds, "images_per_s": len(x) / seconds, "refine_seconds": refine_seconds,
                     "model_sha256": data.sha256_file(model_path),
                     "dvc": dvclock.provenance({"prepared": prepared, "model": model_path}, upstream)}
    result["run"]["mlflow_run_id"] = _log_to_mlflow(params, name, result, saved, images[samples],
                                                    codec.to_uint8(recon[samples]))
    _write_outputs(name, result, per_class, codec.to_uint8(recon[samples]), reports_dir)
    return result


def reconstruct_and_measure(model, x: torch.Tensor, cfg: EvaluateConfig):
    """The full autoencoder and encoder->decoder run separately on x, and the autoencoder's per-image metrics."""
    recon = batched(model, x, cfg.batch_size)
    latents = batched(model.encode, x, codec.BATCH)  # codec compress's batches: the streams start from these latents
    recon_decoder = batched(model.decode, latents, cfg.batch_size)
    return recon, latents, recon_decoder, metrics.per_image(x, recon, cfg.ssim_window, cfg.batch_size)


def _compression(model, model_path: Path, latents, images, x, prepared: Path, params: Params) -> tuple[dict, float]:
    """Real streams of the test images, made as `codec compress` makes them: bytes per image with headers and side
    information, the quality decoded from them, and the seconds spent refining. uint8 and uint8_range for every
    variant (grid calibrated on the train split), from latents refined when codec.refine_steps > 0 (their float
    quality is then *_refined); the entropy-coded stream for variants with a learned prior."""
    cfg, latents = params.evaluate, latents.float().cpu()
    calibration, started = codec.train_calibration(model, prepared), time.perf_counter()
    coded = refine.refine_latents(model, images, latents, params.codec, calibration)
    refine_seconds, steps = time.perf_counter() - started, refine.applied_refine_steps(model, params.codec)
    dim = latents.shape[1]
    result = {"latent_dim": dim, "bytes_per_image_float32": 4 * dim, "compression_ratio_float32": IMAGE_BYTES / (4 * dim),
              **_uint8_form(model, model_path, coded, calibration, x, cfg), "refine_steps": steps}
    if steps:
        result.update(summary(x, batched(model.decode, coded.to(x.device), cfg.batch_size), cfg, "_refined"),
                      refine_lr=params.codec.refine_lr)
    if model.prior is not None:
        result.update(_entropy_form(model, model_path, latents, x))
    return result, refine_seconds


def _uint8_form(model, model_path: Path, latents, calibration, x, cfg: EvaluateConfig) -> dict:
    """The uint8 stream and its range-coded form (uint8_range): the same codes, so one quality for both."""
    streams = {mode: codec.pack(model, model_path, latents, mode, calibration) for mode in ("uint8", "uint8_range")}
    restored = {mode: codec.unpack(model, model_path, stream)[1] for mode, stream in streams.items()}
    if not torch.equal(restored["uint8"], restored["uint8_range"]):
        raise codec.CodecError(f"{model_path}: the uint8_range stream does not decode to the uint8 stream's latents")
    decoded = batched(model.decode, restored["uint8"].to(x.device), cfg.batch_size)
    sizes = {f"{kind}_{mode}": value for mode, stream in streams.items() for kind, value in
             (("bytes_per_image", len(stream) / len(x)), ("compression_ratio", IMAGE_BYTES * len(x) / len(stream)))}
    return {**sizes, **summary(x, decoded, cfg, "_uint8")}


def _entropy_form(model, model_path: Path, latents, x) -> dict:
    """The range-coded stream of integer latents: its quality is the autoencoder's (the same latents)."""
    stream, n = codec.pack(model, model_path, latents, "entropy"), len(latents)
    if not torch.equal(codec.unpack(model, model_path, stream)[1], latents):
        raise codec.CodecError(f"{model_path}: the entropy-coded stream does not decode to its latents")
    with torch.no_grad():
        model_bits = float(model.prior.bits(latents.to(x.device)).mean())
    return {"bytes_per_image_entropy": len(stream) / n, "compression_ratio_entropy": IMAGE_BYTES * n / len(stream),
            "prior_bits_per_image": model_bits,
            "bytes_per_image_entropy_standalone": float(codec.standalone_entropy_bytes(model, latents).mean())}


def _semantic_fidelity(classifier_file: Path, recon: torch.Tensor, labels: np.ndarray, device) -> dict:
    """The classifier stage's test accuracy on the reconstructions, beside its accuracy on the originals."""
    model, saved = classifier.load_classifier(classifier_file, device)
    return {"classifier_accuracy": classifier.accuracy(model, recon, labels),
            "classifier_accuracy_originals": saved["test_accuracy"]}


def latent_diagnostics(latents: torch.Tensor, variance_share: float = 0.99) -> dict:
    """Dead units (0 for every image), active units per image, and the dimensions holding 99% of the variance."""
    latents = latents.double()
    dead = (latents == 0).all(0)
    eigenvalues = torch.linalg.eigvalsh(torch.cov(latents.T)).flip(0).clamp(min=0)
    total = float(eigenvalues.sum())
    effective = int((eigenvalues.cumsum(0) / total < variance_share).sum()) + 1 if total > 0 else 0
    return {"dead_latent_units": int(dead.sum()),
            "active_latent_units_per_image": float((latents != 0).sum(1).double().mean()),
            "effective_latent_dims": effective,
            "latent_units": {"mean": latents.mean(0).tolist(), "std": latents.std(0).tolist(),
                             "active_fraction": (latents != 0).double().mean(0).tolist(), "dead": dead.tolist()}}


def _training_objective(saved: dict, model_path: Path):
    """The objective the model trained on; a file from before train.loss existed trained on MSE."""
    loss = saved["train"].get("loss", "mse")
    if loss not in OBJECTIVES:
        raise data.DataError(f"{model_path}: trained on loss {loss!r}, which this version does not know "
                             f"(one of {', '.join(OBJECTIVES)}); retrain it with this version")
    return OBJECTIVES[loss]


def _final_losses(history_csv: Path) -> dict:
    try:
        last = pd.read_csv(history_csv).iloc[-1]
    except FileNotFoundError:
        raise data.DataError(f"{history_csv}: missing; run the train stage first") from None
    return {"train_loss": float(last.train_loss), "val_loss": float(last.val_loss), "epochs": int(last.epoch)}


def _per_class(per_image: dict[str, torch.Tensor], labels: np.ndarray, mapping: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({k: v.cpu().numpy() for k, v in per_image.items()})
    frame["label"] = labels
    table = frame.groupby("label").agg(mse=("mse", "mean"), psnr=("psnr", "mean"), ssim=("ssim", "mean"),
                                       n=("mse", "size")).reset_index()
    table.insert(1, "char", [mapping[i] for i in table.label])
    return table


def _sample_indices(n: int, cfg: EvaluateConfig) -> np.ndarray:
    """The same test images for every variant, so the report's grids line up."""
    return np.sort(np.random.default_rng(cfg.protocol_seed + 1).choice(n, min(cfg.grid_images, n), replace=False))


def _write_outputs(name: str, result: dict, per_class: pd.DataFrame, samples: np.ndarray, reports: Path) -> None:
    data.atomic_write(reports / "per_class" / f"{name}.csv",
                      lambda p: per_class.to_csv(p, index=False, float_format="%.6g"))
    data.atomic_write(reports / "samples" / f"{name}.npy", lambda p: p.write_bytes(_npy_bytes(samples)))
    data.atomic_write(reports / "metrics" / f"{name}.json",
                      lambda p: p.write_text(json.dumps(result, indent=2, sort_keys=True, allow_nan=False) + "\n"))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _log_to_mlflow(params: Params, name: str, result: dict, saved: dict, originals, recon) -> str:
    """Log into the variant's training run (a new run if the store lacks it); returns the run id."""
    tracking.setup(params.mlflow.experiment)
    flat = {f"test_{k}": v for k, v in {**result, **result["run"]}.items() if isinstance(v, (int, float))}
    flat.update({f"protocol_{k}": v for k, v in result["seed_protocol"].items() if isinstance(v, float)})
    run = {"run_id": saved.get("mlflow_run_id")}
    try:
        mlflow.MlflowClient().get_run(run["run_id"])
    except mlflow.exceptions.MlflowException:
        print(f"evaluate: training run {run['run_id']} not in this store; logging to a new run")
        stage = dvclock.stage_name("evaluate", result["variant"], result["seed"])
        tags = {**tracking.run_tags(stage), "variant": result["variant"], "seed": str(result["seed"])}
        run = {"run_name": f"{name}-evaluate", "tags": tags}
    with tracking.tracked_run(**run):
        mlflow.log_metrics(flat)
        mlflow.set_tags({"evaluated": "true", "evaluate.ssim_window": result["ssim_window"],
                         "codec.refine_steps": result["refine_steps"], "codec.refine_lr": params.codec.refine_lr,
                         "evaluate.model_sha256": result["run"]["model_sha256"],
                         **tracking.flatten({"evaluate": {"dvc": result["run"]["dvc"]}})})
        _tag_registered_versions(mlflow.active_run().info.run_id, result["run"]["dvc"])
        grid = np.concatenate([np.concatenate(list(originals), 1), np.concatenate(list(recon), 1)], 0)
        mlflow.log_image(grid, "reconstructions.png")
        mlflow.log_dict({k: v for k, v in result.items() if k != "per_class"}, "metrics.json")
        mlflow.log_table(pd.DataFrame(result["per_class"]), "per_class.json")
        return mlflow.active_run().info.run_id


def _tag_registered_versions(run_id: str, dvc: dict[str, str]) -> None:
    """The train stage is locked only after it ends: its registered model versions get its lock digest now."""
    if dvc["train_lock_sha256"] == dvclock.UNKNOWN:  # run outside DVC: keep what an earlier run recorded
        return
    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        client.set_model_version_tag(version.name, version.version, "dvc.train_lock_sha256", dvc["train_lock_sha256"])


def _evaluate_and_describe(params: Params, variant: str, seed: int) -> str:
    r = evaluate_variant(params, variant, seed)
    return (f"{run_name(variant, seed)}: MSE {r['mse']:.5f}, PSNR {r['psnr']:.2f} dB (pooled {r['psnr_pooled']:.2f}), "
            f"SSIM {r['ssim']:.4f} on {r['n_test']} images in {r['run']['eval_seconds']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, _evaluate_and_describe, argv,
                     expected=(data.DataError, tracking.TrackingError))


if __name__ == "__main__":
    sys.exit(main())
