"""DVC stage `train@<variant>-<seed>`: train one autoencoder variant with one seed on the prepared train split.

<run> below is `<variant>-seed<seed>`. Writes models/<run>.pt (final weights), models/<run>.best.pt (lowest val
loss) and reports/history/<run>.csv, and records the run in MLflow; with mlflow.log_model the model is also
registered, a new version of `<experiment>-<variant>` per run. An interrupted run resumes from
checkpoints/<run>.ckpt (the last completed epoch) and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import sys

from pipeline import paths, provenance, tracking
from pipeline.cli import run_stage
from pipeline.lib.config import Params, flatten, run_name
from pipeline.lib.io import DataError
from pipeline.lib.trainer import TrainingDiverged
from pipeline.lib.training import RunFiles, train_run


def train(params: Params, variant: str, seed: int, tracker: tracking.Tracker) -> str:
    name = run_name(variant, seed)
    dvc = provenance.provenance({"prepared": paths.prepared_dir()}, {"prepare": "prepare"})
    tags = {
        **tracking.run_tags(provenance.stage_name("train", variant, seed)),
        "variant": variant,
        "seed": str(seed),
        **flatten({"train": {"dvc": dvc}}),
    }
    files = RunFiles(
        paths.model_file(name), paths.best_model_file(name), paths.history_file(name), paths.checkpoint_file(name)
    )
    registered = tracking.registered_model_name(tracker.experiment, variant) if params.mlflow.log_model else None
    final = train_run(params, variant, seed, paths.prepared_dir(), files, tracker, tags, {"dvc": dvc}, registered)
    return f"wrote {final}"


def what_a_rerun_keeps(args) -> str:
    if paths.checkpoint_file(run_name(args.variant, args.seed)).exists():
        return "its finished epochs are in checkpoints/, and the same command resumes after them"
    return "no epoch had finished, so the same command starts the run again"


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        "train",
        __doc__,
        lambda *run: train(*run, tracking.MlflowTracker()),
        argv,
        expected=(DataError, *tracking.STORE_ERRORS, TrainingDiverged),
        resume=what_a_rerun_keeps,
    )


if __name__ == "__main__":
    sys.exit(main())
