"""DVC stage `classifier`: a small CNN trained once on the original train images, to measure semantic fidelity.

evaluate reports its test accuracy on each variant's reconstructions beside its accuracy on the originals
(reports/classifier.json): a compressor that keeps pixels close but turns an 'e' into a 'c' shows up here.
Writes models/classifier.pt and reports/classifier.json, and logs a `classifier` run to MLflow.
"""

from __future__ import annotations

import dataclasses
import sys

import torch

from pipeline import paths, tracking
from pipeline.cli import run_stage
from pipeline.lib import classifier, prepared
from pipeline.lib.config import Params, flatten
from pipeline.lib.device import as_batch_tensor, configure_compute, pick_device
from pipeline.lib.io import DataError, save_torch, write_json


def train_classifier(params: Params, tracker: tracking.Tracker) -> dict:
    cfg, data_dir = params.classifier, paths.prepared_dir()
    configure_compute(params.train.threads)
    device = pick_device(params.train.device)
    splits = {split: prepared.load_split(data_dir, split) for split in prepared.SPLITS}
    n_classes = len(prepared.load_mapping(data_dir))
    train_x = as_batch_tensor(splits["train"][0], device)
    model = classifier.fit(cfg, train_x, torch.from_numpy(splits["train"][1]).to(device), n_classes)
    result = {
        f"{split}_accuracy": classifier.accuracy(model, as_batch_tensor(images, device), labels)
        for split, (images, labels) in splits.items()
    }
    result.update(classes=n_classes, data_manifest_sha256=prepared.manifest_digest(data_dir))
    saved = {"n_classes": n_classes, "config": dataclasses.asdict(cfg), "state_dict": model.state_dict(), **result}
    save_torch(saved, paths.classifier_file())
    write_json(paths.classifier_result_file(), result, sort_keys=True)
    with tracker.run("classifier", tracking.run_tags("classifier")) as run:
        run.log_params(flatten({"classifier": dataclasses.asdict(cfg)}))
        run.log_metrics({k: v for k, v in result.items() if k.endswith("accuracy")})
    return result


def main(argv: list[str] | None = None) -> int:
    def work(params: Params, _) -> str:
        result = train_classifier(params, tracking.MlflowTracker())
        return f"test accuracy on the original images {result['test_accuracy']:.4f}; wrote {paths.classifier_file()}"

    return run_stage("classifier", __doc__, work, argv, per_run=False, expected=(DataError, *tracking.STORE_ERRORS))


if __name__ == "__main__":
    sys.exit(main())
