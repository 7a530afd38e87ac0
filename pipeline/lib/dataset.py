"""EMNIST's IDX files -> the prepared data set: verified, checked, split (val carved from train), upright."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.lib import idx
from pipeline.lib.config import DataConfig
from pipeline.lib.io import DataError, sha256_file
from pipeline.lib.prepared import SPLITS, write_prepared


def prepare_from_directory(cfg: DataConfig, directory: Path, out_dir: Path) -> dict:
    """Verify the IDX files in `directory`, split, write `out_dir`; returns the manifest."""
    files = idx.find_split_files(directory)
    idx.verify_checksums(directory, idx.read_sha256sums(directory))
    mapping = idx.read_mapping(directory)
    train_x, train_y = _read_pair(files["train_images"], files["train_labels"], len(mapping))
    test_x, test_y = _read_pair(files["test_images"], files["test_labels"], len(mapping))
    train_idx, val_idx = stratified_split(train_y, cfg.val_fraction, cfg.seed)
    arrays = {
        "train_images": _upright(train_x[train_idx]),
        "train_labels": train_y[train_idx],
        "val_images": _upright(train_x[val_idx]),
        "val_labels": train_y[val_idx],
        "test_images": _upright(test_x),
        "test_labels": test_y,
    }
    manifest = _manifest(cfg, files, arrays, mapping)
    write_prepared(out_dir, arrays, {"manifest.json": manifest, "mapping.json": mapping})
    return manifest


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), val taking round(val_fraction * n) of each class, in original order."""
    rng = np.random.default_rng(seed)
    val = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(val_fraction * len(members)))
        val.append(rng.permutation(members)[:count])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def _read_pair(images_path: Path, labels_path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = idx.read_idx(images_path, "images")
    labels = idx.read_idx(labels_path, "labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    if len(labels) and labels.max() >= n_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range 0..{n_classes - 1}")
    return images, labels


def _upright(images: np.ndarray) -> np.ndarray:
    """EMNIST stores each character transposed; .T per image gives the upright character."""
    return np.ascontiguousarray(images.transpose(0, 2, 1))


def _manifest(cfg: DataConfig, files: dict[str, Path], arrays: dict[str, np.ndarray], mapping: list[str]) -> dict:
    return {
        "source": cfg.source,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "inputs": {path.name: sha256_file(path) for path in files.values()},
        "arrays": {name: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for name, a in arrays.items()},
        "counts": {split: int(len(arrays[f"{split}_labels"])) for split in SPLITS},
        "per_class": {split: _class_counts(arrays[f"{split}_labels"], len(mapping)) for split in SPLITS},
        "n_classes": len(mapping),
        "layout": "uint8 N x 28 x 28, upright (EMNIST raw layout transposed)",
    }


def _class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    counts = Counter(labels.tolist())
    return [counts.get(c, 0) for c in range(n_classes)]
