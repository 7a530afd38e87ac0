"""The prepare stage: outputs, manifest, layout, determinism, and clean failure on corrupt inputs."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import data, prepare as stage
from pipeline.config import DataConfig
from tests.fakedata import N_CLASSES, idx_bytes, write_sha256sums
from tests.test_data import deny_read

REPO = Path(__file__).resolve().parent.parent
ARRAYS = [f"{split}_{kind}" for split in data.SPLITS for kind in ("images", "labels")]
N_TRAIN, N_TEST = 470, 94  # make_emnist_dir defaults (the emnist_dir fixture)


def _prepare(source: Path, out: Path, seed: int = 3) -> dict:
    return stage.prepare(DataConfig(source=str(source), val_fraction=0.1, seed=seed), out)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _raw(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return (data.read_idx(directory / f"{split}-images-idx3-ubyte.gz", "images"),
            data.read_idx(directory / f"{split}-labels-idx1-ubyte.gz", "labels"))


@pytest.fixture
def prepared(emnist_dir, tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "prepared"
    return out, _prepare(emnist_dir, out)


def test_outputs_and_manifest(emnist_dir, prepared):
    out, manifest = prepared
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.npy" for name in ARRAYS] + ["manifest.json", "mapping.json"])
    assert not out.with_name("prepared.tmp").exists()
    assert data.load_manifest(out) == manifest
    assert {"source", "inputs", "arrays", "counts", "per_class", "seed"} <= set(manifest)
    assert manifest["source"] == str(emnist_dir) and manifest["seed"] == 3 and manifest["n_classes"] == N_CLASSES
    n_val = sum(manifest["per_class"]["val"])
    assert manifest["counts"] == {"train": N_TRAIN - n_val, "val": n_val, "test": N_TEST}
    assert manifest["inputs"] == {name: data.sha256_file(emnist_dir / name)
                                  for name in data.read_sha256sums(emnist_dir) if "idx" in name}
    assert len(manifest["inputs"]) == 4
    for split in data.SPLITS:
        images, labels = data.load_split(out, split)
        assert images.dtype == np.uint8 and images.shape == (manifest["counts"][split], 28, 28)
        assert labels.dtype == np.int64 and manifest["per_class"][split] == np.bincount(labels, minlength=47).tolist()
    assert set(manifest["arrays"]) == set(ARRAYS)
    assert json.loads((out / "mapping.json").read_text()) == list(data.BALANCED_CHARS)


def test_images_are_upright_transposes_of_raw(emnist_dir, prepared):
    out, _ = prepared
    raw_images, raw_labels = _raw(emnist_dir, "test")
    images, labels = data.load_split(out, "test")
    np.testing.assert_array_equal(labels, raw_labels)  # test split untouched: same items, same order
    np.testing.assert_array_equal(images, raw_images.transpose(0, 2, 1))
    assert not np.array_equal(images, raw_images)  # the glyphs are not symmetric
    np.testing.assert_array_equal(images[5], raw_images[5].T)


def test_val_is_a_stratified_disjoint_part_of_train(emnist_dir, prepared):
    out, manifest = prepared
    raw_images, raw_labels = _raw(emnist_dir, "train")
    train_idx, val_idx = data.stratified_split(raw_labels, 0.1, seed=3)
    assert np.intersect1d(train_idx, val_idx).size == 0 and len(train_idx) + len(val_idx) == N_TRAIN
    for split, idx in (("train", train_idx), ("val", val_idx)):
        images, labels = data.load_split(out, split)
        np.testing.assert_array_equal(labels, raw_labels[idx])
        np.testing.assert_array_equal(images, raw_images[idx].transpose(0, 2, 1))
    per_class = np.bincount(raw_labels, minlength=N_CLASSES)
    assert manifest["per_class"]["val"] == [round(0.1 * n) for n in per_class]


def test_rerun_is_byte_identical(emnist_dir, prepared, tmp_path):
    out, _ = prepared
    first = _snapshot(out)
    _prepare(emnist_dir, out)  # over the existing output
    _prepare(emnist_dir, tmp_path / "second")
    assert _snapshot(out) == first and _snapshot(tmp_path / "second") == first
    _prepare(emnist_dir, tmp_path / "other-seed", seed=4)
    assert _snapshot(tmp_path / "other-seed")["val_labels.npy"] != first["val_labels.npy"]


# ---------------------------------------------------------------- corrupt inputs

def _rewrite(name: str, transform, refresh_sums: bool = True):
    def corrupt(directory: Path) -> None:
        path = directory / name
        path.write_bytes(transform(path.read_bytes()))
        if refresh_sums:  # so that the reader, not the checksum, meets the damage
            write_sha256sums(directory)
    return corrupt


def _labels(name: str, labels: np.ndarray):
    return _rewrite(name, lambda _: gzip.compress(idx_bytes(labels), mtime=0))


def _empty(directory: Path) -> None:
    for path in directory.iterdir():
        path.unlink()


TRAIN_IMG, TRAIN_LAB, TEST_LAB = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "test-labels-idx1-ubyte.gz"
CORRUPT = {  # id: (damage, file the error must name, phrase)
    "truncated-gzip": (_rewrite(TRAIN_IMG, lambda b: b[: len(b) // 2]), TRAIN_IMG, "truncated gzip stream"),
    "wrong-magic": (_rewrite(TEST_LAB, lambda b: gzip.compress(b"\0\0\x08\x03" + gzip.decompress(b)[4:])),
                    TEST_LAB, "wrong magic number 2051"),
    "count-mismatch": (_labels(TRAIN_LAB, np.zeros(N_TRAIN - 1, np.uint8)), TRAIN_LAB, "469 labels for 470 images"),
    "label-out-of-range": (_labels(TEST_LAB, np.full(N_TEST, N_CLASSES, np.uint8)), TEST_LAB,
                           "label 47 out of range 0..46"),
    "checksum-mismatch": (_rewrite(TRAIN_LAB, lambda b: b[:-1] + bytes([b[-1] ^ 1]), refresh_sums=False),
                          TRAIN_LAB, "sha256 mismatch"),
    "empty-directory": (_empty, "", "no file matching train-images-idx3-ubyte"),
}


def _params(tmp_path: Path, source: Path) -> Path:
    variant = {"encoder_filters": [32], "encoder_strides": [2], "latent_dim": 4,
               "decoder_filters": [8], "decoder_strides": [2]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"variants": {"m": variant}, "data": {"source": str(source), "seed": 3}}))
    return path


def _assert_one_line_error(stderr: str, named: Path, phrase: str) -> None:
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith("prepare: error: ") and str(named) in stderr and phrase in stderr


@pytest.mark.parametrize("corrupt, name, phrase", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_input_fails_cleanly(emnist_dir, tmp_path, capsys, corrupt, name, phrase):
    good_out, fresh_out = tmp_path / "good", tmp_path / "fresh"
    _prepare(emnist_dir, good_out)
    before = _snapshot(good_out)
    corrupt(emnist_dir)
    params = _params(tmp_path, emnist_dir)
    capsys.readouterr()
    for out in (good_out, fresh_out):
        assert stage.main(["--params", str(params), "--out", str(out)]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        _assert_one_line_error(captured.err, emnist_dir / name, phrase)
    assert _snapshot(good_out) == before  # a previous good output is left intact
    assert not fresh_out.exists() and not (tmp_path / "fresh.tmp").exists() and not (tmp_path / "good.tmp").exists()


def test_unreadable_input_is_a_data_error(emnist_dir, tmp_path, monkeypatch):
    deny_read(emnist_dir / TRAIN_IMG, monkeypatch)
    with pytest.raises(data.DataError, match="Permission denied") as err:
        _prepare(emnist_dir, tmp_path / "out")
    assert str(emnist_dir / TRAIN_IMG) in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["truncated-gzip", "checksum-mismatch"])
def test_cli_subprocess_fails_with_one_line(emnist_dir, tmp_path, case):
    corrupt, name, phrase = CORRUPT[case]
    out = tmp_path / "out"
    _prepare(emnist_dir, out)
    before = _snapshot(out)
    corrupt(emnist_dir)
    result = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--params", str(_params(tmp_path, emnist_dir)),
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stdout == ""
    _assert_one_line_error(result.stderr, emnist_dir / name, phrase)
    assert _snapshot(out) == before


def test_cli_subprocess_success(emnist_dir, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--params", str(_params(tmp_path, emnist_dir)),
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    manifest = data.load_manifest(out)
    assert f"test {N_TEST}" in result.stdout and f"val {manifest['counts']['val']}" in result.stdout
    assert _snapshot(out) == _snapshot(_prepare_to(emnist_dir, tmp_path / "inproc"))


def _prepare_to(source: Path, out: Path) -> Path:
    _prepare(source, out)
    return out
