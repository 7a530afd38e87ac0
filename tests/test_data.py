"""IDX parsing, split-file discovery, checksums, mapping (pipeline.lib.idx, io) and the stratified split (dataset)."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.lib import dataset, idx
from pipeline.lib.io import DataError, sha256_file
from tests.fakedata import idx_bytes, make_emnist_dir, write_idx

IMAGES = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
LABELS = np.array([0, 46, 7, 7], dtype=np.uint8)


def deny_read(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `path` unreadable: chmod 000, or (as root, where that does not block reads) a failing Path.open."""
    path.chmod(0)
    if os.geteuid() != 0 and not os.access(path, os.R_OK):
        return
    real_open = Path.open

    def denied(self, *args, **kwargs):
        if Path(self) == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)  # Path.read_bytes/read_text go through Path.open


# ---------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("kind, array", [("images", IMAGES), ("labels", LABELS)])
def test_read_idx_round_trip(tmp_path, gz, kind, array):
    path = write_idx(tmp_path / f"x-{kind}", array, gz=gz)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") is gz
    got = idx.read_idx(path, kind)
    assert got.dtype == np.uint8 and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def _gz(payload: bytes) -> bytes:
    return gzip.compress(payload, mtime=0)


def _damaged_gz(payload: bytes) -> bytes:
    raw = bytearray(_gz(payload))
    raw[20:40] = bytes(b ^ 0xFF for b in raw[20:40])  # inside the deflate stream
    return bytes(raw)


GOOD = idx_bytes(IMAGES)
IDX_ERRORS = {  # id: (file bytes, kind, phrase the message must contain)
    "wrong-magic": (idx_bytes(IMAGES, magic=2049), "images", "wrong magic number 2049, expected 2051"),
    "labels-magic-for-images": (idx_bytes(LABELS), "images", "wrong magic number 2049"),
    "more-bytes-than-header": (GOOD + b"\0" * 5, "images", f"holds {IMAGES.size + 5} bytes"),
    "fewer-bytes-than-header": (GOOD[:-28], "images", f"holds {IMAGES.size - 28} bytes"),
    "fewer-labels": (idx_bytes(LABELS)[:-1], "labels", "header says 4 items"),
    "too-short": (b"\x00\x00", "images", "too short for an IDX header (2 bytes)"),
    "truncated-header": (GOOD[:10], "images", "truncated IDX header"),
    "truncated-gzip": (_gz(GOOD)[: len(_gz(GOOD)) // 2], "images", "truncated gzip stream"),
    "damaged-gzip": (_damaged_gz(GOOD), "images", "cannot read"),
    "gzip-of-garbage-count": (_gz(GOOD[:-1]), "images", "header says 3 items"),
}


@pytest.mark.parametrize("content, kind, phrase", IDX_ERRORS.values(), ids=IDX_ERRORS.keys())
def test_read_idx_rejects_corrupt_files(tmp_path, content, kind, phrase):
    path = tmp_path / "broken-idx-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        idx.read_idx(path, kind)
    message = str(err.value)
    assert message.startswith(f"{path}:"), message
    assert phrase in message and "\n" not in message


def test_read_idx_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match=r"nothere-idx1-ubyte: cannot read: No such file"):
        idx.read_idx(tmp_path / "nothere-idx1-ubyte", "labels")


def test_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", LABELS)
    deny_read(path, monkeypatch)
    with pytest.raises(DataError, match="Permission denied") as err:
        idx.read_idx(path, "labels")
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="Permission denied") as err:
        sha256_file(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------- find_split_files

NAME_STYLES = {
    "mnist-gz": ("{split}-{kind}-idx{n}-ubyte.gz", True),
    "mnist-plain": ("{split}-{kind}-idx{n}-ubyte", False),
    "emnist-balanced": ("emnist-balanced-{split}-{kind}-idx{n}-ubyte.gz", True),
    "partial-slice": ("emnist-balanced-{split}-{kind}-idx{n}-ubyte.PARTIAL-idx103680-112799.gz", True),
}


def _write_split_files(directory: Path, style: str, gz: bool) -> dict[str, str]:
    names = {}
    for split in ("train", "test"):
        for kind, n, array in (("images", 3, IMAGES), ("labels", 1, LABELS)):
            names[f"{split}_{kind}"] = style.format(split=split, kind=kind, n=n)
            write_idx(directory / names[f"{split}_{kind}"], array, gz=gz)
    return names


@pytest.mark.parametrize("style, gz", NAME_STYLES.values(), ids=NAME_STYLES.keys())
def test_find_split_files_name_styles(tmp_path, style, gz):
    names = _write_split_files(tmp_path, style, gz)
    (tmp_path / "SHA256SUMS").write_text("")
    (tmp_path / "mapping.txt").write_text("")
    found = idx.find_split_files(tmp_path)
    assert found == {key: tmp_path / name for key, name in names.items()}
    np.testing.assert_array_equal(idx.read_idx(found["test_images"], "images"), IMAGES)


def test_find_split_files_ignores_partial_downloads(emnist_dir):
    for leftover in ("train-images-idx3-ubyte.gz.part", "test-labels-idx1-ubyte.gz.tmp"):
        (emnist_dir / leftover).write_bytes(b"junk")
    found = idx.find_split_files(emnist_dir)
    assert found["train_images"].name == "train-images-idx3-ubyte.gz"
    assert found["test_labels"].name == "test-labels-idx1-ubyte.gz"


def _remove(name):
    return lambda d: (d / name).unlink()


def _add(name):
    return lambda d: (d / name).write_bytes(b"")


def _empty(directory: Path) -> None:
    for path in directory.iterdir():
        path.unlink()


FIND_ERRORS = {  # id: (change to the good directory, phrases the message must contain)
    "missing": (_remove("test-labels-idx1-ubyte.gz"), ["no file matching test-labels-idx1-ubyte"]),
    "ambiguous-plain-and-gz": (
        _add("train-images-idx3-ubyte"),
        ["several files", "train-images-idx3-ubyte, train-images-idx3-ubyte.gz"],
    ),
    "ambiguous-partial-slice": (
        _add("train-labels-idx1-ubyte.PARTIAL-idx103680-112799.gz"),
        ["several files", "train-labels-idx1-ubyte.PARTIAL-idx103680-112799.gz"],
    ),
    "empty": (_empty, ["no file matching train-images-idx3-ubyte"]),
}


@pytest.mark.parametrize("change, phrases", FIND_ERRORS.values(), ids=FIND_ERRORS.keys())
def test_find_split_files_errors_name_the_directory(emnist_dir, change, phrases):
    change(emnist_dir)
    with pytest.raises(DataError) as err:
        idx.find_split_files(emnist_dir)
    message = str(err.value)
    assert message.startswith(f"{emnist_dir}:")
    for phrase in phrases:
        assert phrase in message


def test_find_split_files_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        idx.find_split_files(tmp_path / "absent")


# ---------------------------------------------------------------- checksums


def test_sha256sums_parse_and_verify(emnist_dir):
    sums = idx.read_sha256sums(emnist_dir)
    files = sorted(p.name for p in emnist_dir.iterdir() if p.name != "SHA256SUMS")
    assert sorted(sums) == files and len(files) == 5
    for name, digest in sums.items():
        assert digest == hashlib.sha256((emnist_dir / name).read_bytes()).hexdigest()
        assert sha256_file(emnist_dir / name) == digest
    idx.verify_checksums(emnist_dir, sums)  # no error


def test_sha256sums_binary_marker_blank_lines_and_absence(tmp_path):
    assert idx.read_sha256sums(tmp_path) == {}
    (tmp_path / "SHA256SUMS").write_text(f"\n{'a' * 64} *x.gz\n\n{'b' * 64}  y\n")
    assert idx.read_sha256sums(tmp_path) == {"x.gz": "a" * 64, "y": "b" * 64}


@pytest.mark.parametrize("line", ["nothex  x.gz", f"{'a' * 64}", f"{'a' * 64}  two words"])
def test_sha256sums_malformed_line_is_named(tmp_path, line):
    (tmp_path / "SHA256SUMS").write_text(f"{'c' * 64}  ok\n{line}\n")
    with pytest.raises(DataError, match=r"SHA256SUMS:2: expected '<sha256>  <file name>'"):
        idx.read_sha256sums(tmp_path)


def test_checksum_mismatch_and_missing_file_are_named(emnist_dir):
    target = emnist_dir / "train-labels-idx1-ubyte.gz"
    sums = idx.read_sha256sums(emnist_dir)
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(DataError, match="sha256 mismatch") as err:
        idx.verify_checksums(emnist_dir, sums)
    assert str(err.value).startswith(f"{target}:") and sums[target.name] in str(err.value)
    with pytest.raises(DataError, match="listed in the checksums but missing"):
        idx.verify_checksums(emnist_dir, {"gone.gz": "0" * 64})


# ---------------------------------------------------------------- mapping


def test_read_mapping_from_file_and_default(tmp_path):
    with_file = make_emnist_dir(tmp_path / "a", n_train=47, n_test=47)
    without = make_emnist_dir(tmp_path / "b", n_train=47, n_test=47, mapping=False)
    assert idx.read_mapping(with_file) == list(idx.BALANCED_CHARS)
    assert idx.read_mapping(without) == list(idx.BALANCED_CHARS)
    (without / "emnist-custom-mapping.txt").write_text("1 66\n0 65\n\n2 99\n")
    assert idx.read_mapping(without) == ["A", "B", "c"]


@pytest.mark.parametrize(
    "text, phrase", [("0 65\n2 66\n", "without gaps"), ("0 A\n", "not a '<label>"), ("0 65 1\n", "not a '<label>")]
)
def test_read_mapping_rejects_bad_files(tmp_path, text, phrase):
    (tmp_path / "mapping.txt").write_text(text)
    with pytest.raises(DataError, match=phrase) as err:
        idx.read_mapping(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "mapping.txt"))


# ---------------------------------------------------------------- stratified split

CLASS_SIZES = {0: 10, 1: 7, 2: 3, 3: 25, 4: 1, 9: 4}


def _labels(seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in CLASS_SIZES.items()])
    return np.random.default_rng(seed).permutation(labels).astype(np.uint8)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_stratified_split_counts_disjoint_and_complete(fraction):
    labels = _labels()
    train, val = dataset.stratified_split(labels, fraction, seed=1)
    for label, n in CLASS_SIZES.items():
        assert np.sum(labels[val] == label) == round(fraction * n)
        assert np.sum(labels[train] == label) == n - round(fraction * n)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # original order


def test_stratified_split_is_seeded():
    labels = _labels()
    first = dataset.stratified_split(labels, 0.3, seed=5)
    again = dataset.stratified_split(labels.copy(), 0.3, seed=5)
    other = dataset.stratified_split(labels, 0.3, seed=6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    assert len(first[1]) == len(other[1])
