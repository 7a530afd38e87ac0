"""The prepared data set (the prepare stage's output): split arrays, mapping and manifest, read and written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipeline.lib.io import DataError, fsync_path, remove_stale_temporaries, sha256_file, temporary_prefix

SPLITS = ("train", "val", "test")


def write_prepared(out_dir: Path, arrays: dict[str, np.ndarray], extra: dict[str, object]) -> None:
    """Write arrays as .npy plus JSON files into a temporary sibling, fsynced, then swap it in whole: the previous
    output stays until the new one is complete. A directory that is not a prepared data set is never replaced."""
    if out_dir.exists() and not (out_dir / "manifest.json").is_file() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir}: exists and is not a prepared data set (no manifest.json); not replacing it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(out_dir), suffix=".tmp", dir=out_dir.parent))
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        for name, content in extra.items():
            (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        for file in [*tmp.iterdir(), tmp]:
            fsync_path(file)
        os.chmod(tmp, 0o755)
        old = out_dir.with_name(f"{temporary_prefix(out_dir)}old.tmp")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(out_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def load_split(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28), upright, and int64 labels of one prepared split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    try:
        images = np.load(prepared / f"{split}_images.npy")
        labels = np.load(prepared / f"{split}_labels.npy").astype(np.int64)
    except FileNotFoundError as err:
        raise DataError(f"{err.filename}: missing; run the prepare stage first (dvc repro prepare)") from None
    return images, labels


def load_mapping(prepared: Path) -> list[str]:
    """Label -> character of the prepared data."""
    return json.loads((prepared / "mapping.json").read_text())


def load_manifest(prepared: Path) -> dict:
    return json.loads(_manifest_file(prepared).read_text())


def manifest_digest(prepared: Path) -> str:
    """sha256 of manifest.json, which itself holds the sha256 of every prepared array."""
    return sha256_file(_manifest_file(prepared))


def _manifest_file(prepared: Path) -> Path:
    path = prepared / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the prepare stage first (dvc repro prepare)")
    return path
