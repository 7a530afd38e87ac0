"""DVC stage `study@<model>`: the study's published weights, measured like any run (the report's reference row).

Gets the study's encoder and decoder of <model> (model01 ... model04): from its repository at the pinned commit
(study.url) or from a directory (study.source), checked against the pinned SHA-256s (study.checksums) either way.
Loads them into this project's <model> variant, saves models/study/<model>.pt and measures it with the evaluate
stage's code on the same test images: reports/study/<model>.json. Its train_loss, val_loss and epochs are the
study's own log (pipeline/reference.yaml), not measured here; its seed is unknown and recorded as -1.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import yaml

from pipeline import paths, provenance, tracking
from pipeline.cli import run_stage
from pipeline.lib import schema
from pipeline.lib.config import Params
from pipeline.lib.config_sections import STUDY_SOURCE
from pipeline.lib.download import fetch_verified
from pipeline.lib.evaluation import evaluate_model
from pipeline.lib.idx import parse_sha256sums, verify_checksums
from pipeline.lib.io import DataError, save_torch, write_text
from pipeline.lib.keras_weights import load_study_model, study_files

UNKNOWN_SEED = -1
OFFLINE_HINT = (
    "Point the pipeline at a local copy instead: add STUDY=/path/to/the-keras-files to the make command (or set "
    "study.source; study.models: [] leaves the published weights out)"
)


def study_weights(params: Params, model: str) -> tuple[Path, dict[str, str]]:
    """The directory holding the model's encoder and decoder files, verified, and {file name: pinned sha256}."""
    cfg, checksums = params.study, paths.project_path(params.study.checksums)
    sums = parse_sha256sums(checksums) if checksums.is_file() else {}
    missing = [name for name in study_files(model) if name not in sums]
    if missing:
        raise DataError(f"{checksums}: no pinned sha256 for {', '.join(missing)} (study.checksums)")
    pinned = {name: sums[name] for name in study_files(model)}
    if cfg.source == STUDY_SOURCE:
        directory = fetch_verified(cfg.url, pinned, paths.study_raw_dir(), OFFLINE_HINT)
    else:
        directory = paths.project_path(cfg.source)
        verify_checksums(directory, pinned)
    return directory, pinned


def study(params: Params, model: str, tracker: tracking.Tracker) -> dict:
    directory, pinned = study_weights(params, model)
    encoder, decoder = (directory / name for name in pinned)
    spec = params.variant(model)
    reference = yaml.safe_load(paths.REFERENCE_FILE.read_text())
    model_path = paths.study_model_file(model)
    save_torch(
        {
            "variant": model,
            "seed": UNKNOWN_SEED,
            "spec": dataclasses.asdict(spec),
            "train": {"loss": "mse"},
            "data_manifest_sha256": "the study's own EMNIST-Balanced train split, not this project's",
            "source_sha256": pinned,
            "state_dict": load_study_model(spec, encoder, decoder).state_dict(),
        },
        model_path,
    )
    logged = {key: reference["reported"][model][key] for key in ("train_loss", "val_loss")}
    evaluation = evaluate_model(
        params,
        model,
        UNKNOWN_SEED,
        model_path,
        paths.prepared_dir(),
        {**logged, "epochs": reference["epochs"]},
        paths.classifier_file(),
    )
    result = evaluation.metrics
    result["run"]["dvc"] = provenance.provenance({"prepared": paths.prepared_dir()}, {"prepare": "prepare"})
    run = tracker.new_finished_run(f"study-{model}", {**tracking.run_tags(f"study@{model}"), "variant": model})
    result["run"]["mlflow_run_id"] = run.run_id
    write_text(paths.study_metrics_file(model), schema.dumps(result))
    run.log_metrics({f"test_{k}": v for k, v in result.items() if isinstance(v, (int, float)) and k != "seed"})
    run.set_tags({"study.source": params.study.source, "study.url": params.study.url})
    run.set_tags({f"study.sha256.{name}": digest for name, digest in pinned.items()})
    return result


def main(argv: list[str] | None = None) -> int:
    def options(parser):
        parser.add_argument("model", help="one of study.models (model01 ... model04)")

    def work(params: Params, args) -> str:
        r = study(params, args.model, tracking.MlflowTracker())
        return (
            f"study {args.model}, published weights: MSE {r['mse']:.5f}, SSIM {r['ssim']:.4f}, PSNR {r['psnr']:.2f} dB "
            f"(pooled {r['psnr_pooled']:.2f}), {r['dead_latent_units']} dead latent units on {r['n_test']} images"
        )

    return run_stage(
        "study", __doc__, work, argv, per_run=False, expected=(DataError, *tracking.STORE_ERRORS), options=options
    )


if __name__ == "__main__":
    sys.exit(main())
