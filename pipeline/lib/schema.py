"""The metrics JSON of one run (reports/metrics/<run>.json): its keys and types, one definition shared by the
evaluate stage (writes it), the report and rate-distortion (read it) and lineage (checks it). docs/metrics.md
describes each key."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.lib.io import DataError

NUMBER = (int, float)
QUALITY = {
    "mse": NUMBER,
    "psnr": NUMBER,
    "psnr_pooled": NUMBER,
    "ssim": NUMBER,
    "psnr_inf_images": int,
    "psnr_undefined_images": int,
}


def _quality(suffix: str) -> dict[str, type | tuple]:
    return {f"{key}{suffix}": kind for key, kind in QUALITY.items()}


REQUIRED = {
    "variant": str, "seed": int, "n_test": int, "ssim_window": str, "data_manifest_sha256": str,
    "epochs": int, "train_loss": NUMBER, "val_loss": NUMBER, "latent_dim": int, "train_flops_per_image": int,
    **_quality(""), **_quality("_decoder"), **_quality("_uint8"), "max_abs_diff_decoder": NUMBER,
    "bytes_per_image_float32": NUMBER, "compression_ratio_float32": NUMBER,
    "bytes_per_image_uint8": NUMBER, "compression_ratio_uint8": NUMBER, "refine_steps": int,
    "dead_latent_units": int, "active_latent_units_per_image": NUMBER, "effective_latent_dims": int,
    "latent_units": dict, "classifier_accuracy": NUMBER, "classifier_accuracy_originals": NUMBER,
    "seed_protocol": dict, "per_class": list, "sample_indices": list, "run": dict,
}  # fmt: skip
OPTIONAL = {
    # absent from metrics written before the codec's uint8_range mode existed
    "bytes_per_image_uint8_range": NUMBER, "compression_ratio_uint8_range": NUMBER,
    # with codec.refine_steps > 0
    **_quality("_refined"), "refine_lr": NUMBER,
    # with codec.refine_steps > 0, since codec.refine_method (before it, every refinement was Adam)
    "refine_method": str, "refine_tol": NUMBER,
    # entropy-coded variants (rate_weight > 0)
    "bytes_per_image_entropy": NUMBER, "compression_ratio_entropy": NUMBER, "prior_bits_per_image": NUMBER,
    "bytes_per_image_entropy_standalone": NUMBER,
    # absent from metrics written before evaluate looked for a collapsed model
    "output_range": NUMBER, "collapsed": bool,
}  # fmt: skip
# the "run" block: how this evaluation ran, not what it measured (timings, digests, provenance, tracking run)
RUN = {
    "eval_seconds": NUMBER,
    "images_per_s": NUMBER,
    "refine_seconds": NUMBER,
    "model_sha256": str,
    "dvc": dict,
    "mlflow_run_id": (str, type(None)),
}


def check(metrics: dict, where: str) -> dict:
    """The metrics unchanged if they follow the schema; else a DataError naming the first wrong key."""
    for schema, tree, prefix in ((REQUIRED, metrics, ""), (RUN, metrics.get("run", {}), "run.")):
        for key, kind in schema.items():
            if key not in tree:
                raise DataError(f"{where}: no key {prefix}{key}; rerun its evaluate stage")
            _check_type(tree[key], kind, f"{where}: {prefix}{key}")
    for key, kind in OPTIONAL.items():
        if key in metrics:
            _check_type(metrics[key], kind, f"{where}: {key}")
    unknown = sorted(set(metrics) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]} (not in pipeline/lib/schema.py)")
    return metrics


def _check_type(value: object, kind, where: str) -> None:
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):  # a bool is an int to Python
        raise DataError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def dumps(metrics: dict) -> str:
    """The file's text: checked, sorted keys, no NaN (not JSON)."""
    return json.dumps(check(metrics, "metrics"), indent=2, sort_keys=True, allow_nan=False) + "\n"


def load(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run its evaluate stage first") from None
    try:
        return check(json.loads(text), str(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSON ({err})") from None
