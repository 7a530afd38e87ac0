"""DVC stage `classifier`: a small CNN trained once on the original train images, to measure semantic fidelity.

evaluate reports its test accuracy on each variant's reconstructions beside its accuracy on the originals
(reports/classifier.json): a compressor that keeps pixels close but turns an 'e' into a 'c' shows up here.
Writes models/classifier.pt and reports/classifier.json, and logs a `classifier` run to MLflow.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline import data, tracking
from pipeline.cli import run_stage
from pipeline.config import REPO_ROOT, ClassifierConfig, Params
from pipeline.prepare import PREPARED_DIR
from pipeline.device import configure_determinism, pick_device
from pipeline.train import MODELS_DIR, as_batch_tensor, save_atomic

CLASSIFIER_FILE = MODELS_DIR / "classifier.pt"
RESULT_FILE = REPO_ROOT / "reports" / "classifier.json"


def build_classifier(n_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, n_classes))


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: np.ndarray, batch_size: int = 2048) -> float:
    """Share of images (float, N x 1 x 28 x 28 in [0, 1]) whose predicted class is the label."""
    model.eval()
    predictions = torch.cat([model(images[i:i + batch_size].float()).argmax(1).cpu()
                             for i in range(0, len(images), batch_size)])
    return float((predictions.numpy() == labels).mean())


def load_classifier(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The trained classifier in eval mode, and its file's metadata (accuracies on the original splits)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise data.DataError(f"{path}: missing; run the classifier stage first (dvc repro classifier)") from None
    model = build_classifier(saved["n_classes"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved


def fit(cfg: ClassifierConfig, train_x: torch.Tensor, train_y: torch.Tensor, n_classes: int) -> nn.Module:
    torch.manual_seed(cfg.seed)
    model = build_classifier(n_classes).to(train_x.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    steps = cfg.epochs * -(-len(train_x) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    with tqdm(total=steps, desc="classifier", unit="batch", mininterval=1.0) as bar:
        for _ in range(cfg.epochs):
            model.train()
            for batch in torch.randperm(len(train_x), generator=generator).split(cfg.batch_size):
                batch = batch.to(train_x.device)
                loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.update()
    return model


def train_classifier(params: Params, prepared: Path = PREPARED_DIR, out: Path = CLASSIFIER_FILE,
                     result_file: Path = RESULT_FILE) -> dict:
    cfg = params.classifier
    configure_determinism(params.train)
    device = pick_device(params.train.device)
    splits = {split: data.load_split(prepared, split) for split in data.SPLITS}
    n_classes = len(json.loads((prepared / "mapping.json").read_text()))
    train_x, train_y = as_batch_tensor(splits["train"][0], device), torch.from_numpy(splits["train"][1]).to(device)
    model = fit(cfg, train_x, train_y, n_classes)
    result = {f"{split}_accuracy": accuracy(model, as_batch_tensor(images, device), labels)
              for split, (images, labels) in splits.items()}
    result.update(classes=n_classes, data_manifest_sha256=data.manifest_digest(prepared))
    save_atomic({"n_classes": n_classes, "config": dataclasses.asdict(cfg), "state_dict": model.state_dict(),
                 **result}, out)
    data.atomic_write(result_file, lambda p: p.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n"))
    tracking.setup(params.mlflow.experiment)
    with tracking.tracked_run(run_name="classifier", tags=tracking.run_tags("classifier")):
        mlflow.log_params(tracking.flatten({"classifier": dataclasses.asdict(cfg)}))
        mlflow.log_metrics({k: v for k, v in result.items() if k.endswith("accuracy")})
    return result


def main(argv: list[str] | None = None) -> int:
    def work(params: Params) -> str:
        result = train_classifier(params)
        return f"test accuracy on the original images {result['test_accuracy']:.4f}; wrote {CLASSIFIER_FILE}"

    return run_stage("classifier", __doc__, work, argv, per_run=False,
                     expected=(data.DataError, tracking.TrackingError))


if __name__ == "__main__":
    sys.exit(main())
