"""Preparing the data set (pipeline.lib.dataset, prepared) and the prepare stage (pipeline.stages.prepare): outputs,
manifest, layout, determinism, data.source resolution, and clean failure on corrupt inputs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.lib.config import DataConfig
from pipeline.lib.dataset import prepare_from_directory, stratified_split
from pipeline.lib.idx import BALANCED_CHARS, read_idx, read_sha256sums
from pipeline.lib.io import DataError, sha256_file
from pipeline.lib.prepared import SPLITS, load_manifest, load_mapping, load_split
from pipeline.stages import prepare as stage
from tests.fakedata import N_CLASSES, idx_bytes, make_emnist_dir, write_sha256sums
from tests.test_data import deny_read

REPO = Path(__file__).resolve().parent.parent
ARRAYS = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
N_TRAIN, N_TEST = 470, 94  # make_emnist_dir defaults (the emnist_dir fixture)


def _prepare(source: Path, out: Path, seed: int = 3) -> dict:
    return prepare_from_directory(DataConfig(source=str(source), val_fraction=0.1, seed=seed), source, out)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _raw(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        read_idx(directory / f"{split}-images-idx3-ubyte.gz", "images"),
        read_idx(directory / f"{split}-labels-idx1-ubyte.gz", "labels"),
    )


@pytest.fixture
def prepared(emnist_dir, tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "prepared"
    return out, _prepare(emnist_dir, out)


def test_outputs_and_manifest(emnist_dir, prepared):
    out, manifest = prepared
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.npy" for name in ARRAYS] + ["manifest.json", "mapping.json"]
    )
    assert not out.with_name("prepared.tmp").exists()
    assert load_manifest(out) == manifest
    assert {"source", "inputs", "arrays", "counts", "per_class", "seed"} <= set(manifest)
    assert manifest["source"] == str(emnist_dir) and manifest["seed"] == 3 and manifest["n_classes"] == N_CLASSES
    n_val = sum(manifest["per_class"]["val"])
    assert manifest["counts"] == {"train": N_TRAIN - n_val, "val": n_val, "test": N_TEST}
    assert manifest["inputs"] == {
        name: sha256_file(emnist_dir / name) for name in read_sha256sums(emnist_dir) if "idx" in name
    }
    assert len(manifest["inputs"]) == 4
    for split in SPLITS:
        images, labels = load_split(out, split)
        assert images.dtype == np.uint8 and images.shape == (manifest["counts"][split], 28, 28)
        assert labels.dtype == np.int64 and manifest["per_class"][split] == np.bincount(labels, minlength=47).tolist()
    assert set(manifest["arrays"]) == set(ARRAYS)
    assert json.loads((out / "mapping.json").read_text()) == load_mapping(out) == list(BALANCED_CHARS)


def test_images_are_upright_transposes_of_raw(emnist_dir, prepared):
    out, _ = prepared
    raw_images, raw_labels = _raw(emnist_dir, "test")
    images, labels = load_split(out, "test")
    np.testing.assert_array_equal(labels, raw_labels)  # test split untouched: same items, same order
    np.testing.assert_array_equal(images, raw_images.transpose(0, 2, 1))
    assert not np.array_equal(images, raw_images)  # the glyphs are not symmetric
    np.testing.assert_array_equal(images[5], raw_images[5].T)


def test_val_is_a_stratified_disjoint_part_of_train(emnist_dir, prepared):
    out, manifest = prepared
    raw_images, raw_labels = _raw(emnist_dir, "train")
    train_idx, val_idx = stratified_split(raw_labels, 0.1, seed=3)
    assert np.intersect1d(train_idx, val_idx).size == 0 and len(train_idx) + len(val_idx) == N_TRAIN
    for split, idx in (("train", train_idx), ("val", val_idx)):
        images, labels = load_split(out, split)
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
    "wrong-magic": (
        _rewrite(TEST_LAB, lambda b: gzip.compress(b"\0\0\x08\x03" + gzip.decompress(b)[4:])),
        TEST_LAB,
        "wrong magic number 2051",
    ),
    "count-mismatch": (_labels(TRAIN_LAB, np.zeros(N_TRAIN - 1, np.uint8)), TRAIN_LAB, "469 labels for 470 images"),
    "label-out-of-range": (
        _labels(TEST_LAB, np.full(N_TEST, N_CLASSES, np.uint8)),
        TEST_LAB,
        "label 47 out of range 0..46",
    ),
    "checksum-mismatch": (
        _rewrite(TRAIN_LAB, lambda b: b[:-1] + bytes([b[-1] ^ 1]), refresh_sums=False),
        TRAIN_LAB,
        "sha256 mismatch",
    ),
    "empty-directory": (_empty, "", "no file matching train-images-idx3-ubyte"),
}


def _params(directory: Path, source: Path | str) -> Path:
    """directory/params.yaml with data.source `source` (as given: absolute or relative)."""
    variant = {
        "encoder_filters": [32],
        "encoder_strides": [2],
        "latent_dim": 4,
        "decoder_filters": [8],
        "decoder_strides": [2],
    }
    path = directory / "params.yaml"
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
    with pytest.raises(DataError, match="Permission denied") as err:
        _prepare(emnist_dir, tmp_path / "out")
    assert str(emnist_dir / TRAIN_IMG) in str(err.value)
    assert not (tmp_path / "out").exists()


def _cli(params: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.stages.prepare", "--params", str(params), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("case", ["truncated-gzip", "checksum-mismatch"])
def test_cli_subprocess_fails_with_one_line(emnist_dir, tmp_path, case):
    corrupt, name, phrase = CORRUPT[case]
    out = tmp_path / "out"
    _prepare(emnist_dir, out)
    before = _snapshot(out)
    corrupt(emnist_dir)
    result = _cli(_params(tmp_path, emnist_dir), out)
    assert result.returncode == 1 and result.stdout == ""
    _assert_one_line_error(result.stderr, emnist_dir / name, phrase)
    assert _snapshot(out) == before


def test_cli_subprocess_success(emnist_dir, tmp_path):
    out = tmp_path / "out"
    result = _cli(_params(tmp_path, emnist_dir), out)
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out)
    assert result.stdout.startswith("prepare: ") and result.stdout.rstrip().endswith(f"-> {out}")
    assert f"test {N_TEST}" in result.stdout and f"val {manifest['counts']['val']}" in result.stdout
    assert _snapshot(out) == _snapshot(_prepare_to(emnist_dir, tmp_path / "inproc"))


def _prepare_to(source: Path, out: Path) -> Path:
    _prepare(source, out)
    return out


# ---------------------------------------------------------------- data.source and the default paths


def test_relative_source_resolves_against_the_project_root(project_root, tmp_path, monkeypatch, capsys):
    """data.source 'local/emnist' is <root>/local/emnist wherever the stage runs; with no arguments the stage reads
    <root>/params.yaml and writes <root>/data/prepared."""
    source = make_emnist_dir(project_root / "local" / "emnist")
    _params(project_root, "local/emnist")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative path must not resolve against the working directory
    assert stage.main([]) == 0
    out = project_root / "data" / "prepared"
    assert capsys.readouterr().out.rstrip().endswith(f"-> {out}")
    manifest = load_manifest(out)
    assert manifest["source"] == "local/emnist"  # as written in params.yaml
    assert manifest["inputs"] == {name: sha256_file(source / name) for name in read_sha256sums(source) if "idx" in name}
    expected = prepare_from_directory(DataConfig(source="local/emnist", seed=3), source, tmp_path / "direct")
    assert manifest == expected and _snapshot(out) == _snapshot(tmp_path / "direct")


def test_relative_source_missing_under_the_root_names_the_resolved_path(project_root, tmp_path, monkeypatch, capsys):
    make_emnist_dir(tmp_path / "cwd" / "local" / "emnist")  # present relative to the working directory only
    monkeypatch.chdir(tmp_path / "cwd")
    params = _params(tmp_path, "local/emnist")
    out = tmp_path / "out"
    assert stage.main(["--params", str(params), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_one_line_error(captured.err, project_root / "local" / "emnist", "not a directory")
    assert not out.exists()
