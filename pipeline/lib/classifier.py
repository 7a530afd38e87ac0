"""The small CNN that measures semantic fidelity: its test accuracy on originals against on reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.lib.config import ClassifierConfig
from pipeline.lib.io import load_torch


def build_classifier(n_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, n_classes))  # fmt: skip


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: np.ndarray, batch_size: int = 256) -> float:
    """Share of images (float, N x 1 x 28 x 28 in [0, 1]) whose predicted class is the label."""
    model.eval()
    predictions = torch.cat(
        [model(images[i : i + batch_size].float()).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    )
    return float((predictions.numpy() == labels).mean())


def load_classifier(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The trained classifier in eval mode, and its file's metadata (accuracies on the original splits)."""
    saved = load_torch(path, "run the classifier stage first (dvc repro classifier)")
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
