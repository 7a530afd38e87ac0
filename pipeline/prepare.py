"""DVC stage `prepare`: get EMNIST-Balanced (official download or a local copy), verify, split, store.

Writes data/prepared/{train,val,test}_{images,labels}.npy (uint8 upright images, labels),
mapping.json and manifest.json. The test split is passed through untouched; val is carved from train.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.config import OFFICIAL_SOURCE, REPO_ROOT, ConfigError, DataConfig, load_params, resolve_source
from pipeline import data

PREPARED_DIR = REPO_ROOT / "data" / "prepared"
RAW_DIR = REPO_ROOT / "data" / "raw"


def prepare(cfg: DataConfig, out_dir: Path = PREPARED_DIR, raw_dir: Path = RAW_DIR) -> dict:
    source = resolve_source(cfg.source)
    directory = data.fetch_official(cfg.url, raw_dir) if source == OFFICIAL_SOURCE else Path(source)
    files = data.find_split_files(directory)
    sums = data.read_sha256sums(directory)
    data.verify_checksums(directory, sums)
    mapping = data.read_mapping(directory)
    train_x, train_y = _read_pair(files["train_images"], files["train_labels"], len(mapping))
    test_x, test_y = _read_pair(files["test_images"], files["test_labels"], len(mapping))
    train_idx, val_idx = data.stratified_split(train_y, cfg.val_fraction, cfg.seed)
    arrays = {
        "train_images": _upright(train_x[train_idx]), "train_labels": train_y[train_idx],
        "val_images": _upright(train_x[val_idx]), "val_labels": train_y[val_idx],
        "test_images": _upright(test_x), "test_labels": test_y,
    }
    manifest = _manifest(cfg, files, arrays, mapping)
    data.write_prepared(out_dir, arrays, {"manifest.json": manifest, "mapping.json": mapping})
    return manifest


def _read_pair(images_path: Path, labels_path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = data.read_idx(images_path, "images")
    labels = data.read_idx(labels_path, "labels")
    if images.shape[1:] != (28, 28):
        raise data.DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise data.DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    if len(labels) and labels.max() >= n_classes:
        raise data.DataError(f"{labels_path}: label {int(labels.max())} out of range 0..{n_classes - 1}")
    return images, labels


def _upright(images: np.ndarray) -> np.ndarray:
    """EMNIST stores each character transposed; .T per image gives the upright character."""
    return np.ascontiguousarray(images.transpose(0, 2, 1))


def _manifest(cfg: DataConfig, files: dict[str, Path], arrays: dict[str, np.ndarray], mapping: list[str]) -> dict:
    return {
        "source": cfg.source,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "inputs": {path.name: data.sha256_file(path) for path in files.values()},
        "arrays": {name: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for name, a in arrays.items()},
        "counts": {split: int(len(arrays[f"{split}_labels"])) for split in data.SPLITS},
        "per_class": {split: _class_counts(arrays[f"{split}_labels"], len(mapping)) for split in data.SPLITS},
        "n_classes": len(mapping),
        "layout": "uint8 N x 28 x 28, upright (EMNIST raw layout transposed)",
    }


def _class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    counts = Counter(labels.tolist())
    return [counts.get(c, 0) for c in range(n_classes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"))
    parser.add_argument("--out", default=str(PREPARED_DIR))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        cfg = load_params(args.params).data
        manifest = prepare(cfg, Path(args.out))
    except (ConfigError, data.DataError) as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"prepare: {counts} images from {cfg.source} in {time.perf_counter() - started:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
