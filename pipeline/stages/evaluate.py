"""DVC stage `evaluate@<variant>-<seed>`: metrics on the whole test split, plus the study's 10-image protocol.

<run> is `<variant>-seed<seed>`. Writes reports/metrics/<run>.json (DVC metrics), reports/per_class/<run>.csv
(DVC plots) and reports/samples/<run>.npy (reconstructions of the report's sample images), then logs the same
numbers into the training run in MLflow (by the run id stored in the model file) without reopening it: whatever
happens here, that run's status stays what training left.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from pipeline import paths, provenance, tracking
from pipeline.cli import run_stage
from pipeline.lib import schema
from pipeline.lib.config import Params, flatten, run_name
from pipeline.lib.evaluation import evaluate_model, final_losses
from pipeline.lib.io import DataError, write_npy, write_text


def evaluate(params: Params, variant: str, seed: int, tracker: tracking.Tracker) -> dict:
    name, model_path = run_name(variant, seed), paths.model_file(run_name(variant, seed))
    evaluation = evaluate_model(
        params,
        variant,
        seed,
        model_path,
        paths.prepared_dir(),
        final_losses(paths.history_file(name)),
        paths.classifier_file(),
    )
    result = evaluation.metrics
    upstream = {"prepare": "prepare", "train": provenance.stage_name("train", variant, seed)}
    result["run"]["dvc"] = provenance.provenance({"prepared": paths.prepared_dir(), "model": model_path}, upstream)
    run = _target_run(tracker, evaluation.trained_run_id, result)
    result["run"]["mlflow_run_id"] = run.run_id
    write_text(paths.per_class_file(name), evaluation.per_class.to_csv(index=False, float_format="%.6g"))
    write_npy(paths.samples_file(name), evaluation.samples)
    write_text(paths.metrics_file(name), schema.dumps(result))
    _log(run, params, result, evaluation.originals, evaluation.samples)
    return result


def _target_run(tracker: tracking.Tracker, trained_run_id: str | None, result: dict):
    """The training run recorded in the model file; a run of its own if this store does not have it."""
    run = tracker.attach(trained_run_id)
    if run is None:
        why = f"training run {trained_run_id} is not in this store" if trained_run_id else "no training run recorded"
        print(f"evaluate: {why}; logging to a new run")
        stage = provenance.stage_name("evaluate", result["variant"], result["seed"])
        tags = {**tracking.run_tags(stage), "variant": result["variant"], "seed": str(result["seed"])}
        run = tracker.new_finished_run(f"{run_name(result['variant'], result['seed'])}-evaluate", tags)
    return run


def _log(run, params: Params, result: dict, originals: np.ndarray, samples: np.ndarray) -> None:
    flat = {f"test_{k}": v for k, v in {**result, **result["run"]}.items() if isinstance(v, (int, float))}
    flat.update({f"protocol_{k}": v for k, v in result["seed_protocol"].items() if isinstance(v, float)})
    run.log_metrics(flat)
    run.set_tags(
        {
            "evaluated": "true",
            "evaluate.ssim_window": result["ssim_window"],
            "codec.refine_steps": result["refine_steps"],
            "codec.refine_method": params.codec.refine_method,
            "codec.refine_tol": params.codec.refine_tol,
            "codec.refine_lr": params.codec.refine_lr,
            "evaluate.model_sha256": result["run"]["model_sha256"],
            **flatten({"evaluate": {"dvc": result["run"]["dvc"]}}),
        }
    )
    if result["run"]["dvc"]["train_lock_sha256"] != provenance.UNKNOWN:  # outside DVC: keep what was recorded
        # the train stage is locked only after it ends: its registered model versions get its lock digest now
        run.tag_model_versions({"dvc.train_lock_sha256": result["run"]["dvc"]["train_lock_sha256"]})
    grid = np.concatenate([np.concatenate(list(originals), 1), np.concatenate(list(samples), 1)], 0)
    run.log_image(grid, "reconstructions.png")
    run.log_dict({k: v for k, v in result.items() if k != "per_class"}, "metrics.json")
    run.log_table(pd.DataFrame(result["per_class"]), "per_class.json")


def _describe(result: dict) -> str:
    r = result
    return (
        f"{run_name(r['variant'], r['seed'])}: MSE {r['mse']:.5f}, PSNR {r['psnr']:.2f} dB (pooled "
        f"{r['psnr_pooled']:.2f}), SSIM {r['ssim']:.4f} on {r['n_test']} images in {r['run']['eval_seconds']:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        "evaluate",
        __doc__,
        lambda *run: _describe(evaluate(*run, tracking.MlflowTracker())),
        argv,
        expected=(DataError, *tracking.STORE_ERRORS),
    )


if __name__ == "__main__":
    sys.exit(main())
