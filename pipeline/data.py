"""EMNIST data: IDX read/verify, the official download with sha256 checks, splits, prepared-array I/O."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import numpy as np
from tqdm import tqdm

SPLITS = ("train", "val", "test")
IDX_MAGIC = {"images": 2051, "labels": 2049}
# The official EMNIST-Balanced mapping (label -> character); used when a directory has no mapping file.
BALANCED_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"
OFFICIAL_SHA256 = {
    "emnist-balanced-train-images-idx3-ubyte.gz": "74295e75e4e9fa2c102147460ee7eb763653d5132d883a84fb88932bfb8d2db4",
    "emnist-balanced-train-labels-idx1-ubyte.gz": "b46d41e5156a0a8aaaa4d18979fdd1588850fa8571018acffd5d93b325a7d6ed",
    "emnist-balanced-test-images-idx3-ubyte.gz": "117fc12b015e37ea98bfb2cbba3f77c3782c056cdbd219b87abfc8661d7135db",
    "emnist-balanced-test-labels-idx1-ubyte.gz": "a67cac948379b67270b9a4d0a01c8ec661598accf2f2b1964340b7c83cb175cd",
}
OFFICIAL_MAPPING = "emnist-balanced-mapping.txt"
CHUNK = 1 << 20


class DataError(RuntimeError):
    """A data file is missing, corrupt or inconsistent; the message names the file."""


# ---------------------------------------------------------------- IDX files

def read_idx(path: Path, kind: str) -> np.ndarray:
    """Parse an IDX file (gzip or plain) of `kind` 'images' (N x rows x cols) or 'labels' (N)."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[kind]:
        raise DataError(f"{path}: wrong magic number {magic}, expected {IDX_MAGIC[kind]} for IDX {kind}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says {dims[0]} items ({expected} bytes of data) "
                        f"but the file holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(tuple(dims))


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: damaged deflate data inside the gzip
        reason = "truncated gzip stream" if isinstance(err, EOFError) else (getattr(err, "strerror", None) or str(err))
        raise DataError(f"{path}: cannot read: {reason}") from None


def find_split_files(directory: Path) -> dict[str, Path]:
    """Locate {train,test}-{images,labels} IDX files, MNIST-style or emnist-<split>- prefixed, .gz or not."""
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory of EMNIST IDX files")
    try:
        names = sorted(p.name for p in directory.iterdir())
    except PermissionError:
        raise DataError(f"{directory}: permission denied") from None
    found = {}
    for split in ("train", "test"):
        for kind, ndim in (("images", 3), ("labels", 1)):
            pattern = re.compile(rf"(emnist-[a-z]+-)?{split}-{kind}-idx{ndim}-ubyte([.-].*)?")
            matches = [n for n in names if pattern.fullmatch(n) and not n.endswith((".part", ".tmp"))]
            if len(matches) != 1:
                what = "no file" if not matches else f"several files ({', '.join(matches)})"
                raise DataError(f"{directory}: {what} matching {split}-{kind}-idx{ndim}-ubyte[.gz]")
            found[f"{split}_{kind}"] = directory / matches[0]
    return found


def read_mapping(directory: Path) -> list[str]:
    """Label -> character, from a '<label> <ascii code>' mapping file if present, else the official one."""
    files = sorted(directory.glob("*mapping.txt"))
    if not files:
        return list(BALANCED_CHARS)
    try:
        rows = [line.split() for line in files[0].read_text().splitlines() if line.strip()]
        table = {int(label): chr(int(code)) for label, code in rows}
    except (ValueError, OSError) as err:
        raise DataError(f"{files[0]}: not a '<label> <ascii code>' mapping file ({err})") from None
    if sorted(table) != list(range(len(table))):
        raise DataError(f"{files[0]}: labels must be 0..N-1 without gaps")
    return [table[i] for i in range(len(table))]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    return digest.hexdigest()


def verify_checksums(directory: Path, expected: dict[str, str]) -> None:
    for name, want in expected.items():
        path = directory / name
        if not path.exists():
            raise DataError(f"{path}: listed in the checksums but missing")
        got = sha256_file(path)
        if got != want:
            raise DataError(f"{path}: sha256 mismatch: expected {want}, got {got}")


def read_sha256sums(directory: Path) -> dict[str, str]:
    path = directory / "SHA256SUMS"
    if not path.exists():
        return {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    sums = {}
    for number, line in enumerate(lines, 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
                raise DataError(f"{path}:{number}: expected '<sha256>  <file name>'")
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


# ---------------------------------------------------------------- official download

def fetch_official(url: str, raw_dir: Path, checksums: dict[str, str] = OFFICIAL_SHA256) -> Path:
    """Download NIST's gzip.zip (resumable), extract the Balanced files and verify their sha256.

    Returns the directory with the verified files. Nothing that is incomplete ever carries a final name.
    """
    target = raw_dir / "emnist-balanced"
    if _verified(target, checksums):
        return target
    archive = raw_dir / "gzip.zip"
    if not archive.exists():
        download(url, archive)
    _extract(archive, target, [*checksums, OFFICIAL_MAPPING])
    try:
        verify_checksums(target, checksums)
    except DataError:
        archive.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        raise
    archive.unlink()  # the verified extracted files are the cache from now on
    return target


def _verified(directory: Path, checksums: dict[str, str]) -> bool:
    try:
        verify_checksums(directory, checksums)
        return True
    except DataError:
        return False


def download(url: str, dest: Path, timeout: float = 30) -> None:
    """Download url to dest through dest.part, resuming a previous partial download with a Range request."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urlopen(request, timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and start:  # the partial file is not a prefix we can extend: start again
            part.unlink()
            return download(url, dest, timeout)
        raise DataError(f"{url}: download failed: HTTP {err.code} {err.reason}") from None
    except (URLError, OSError) as err:
        raise DataError(f"{url}: cannot download ({getattr(err, 'reason', err)}). Offline? Point the "
                        "pipeline at a local copy instead: make repro DATA=/path/to/emnist-idx-dir "
                        "(or set data.source in params.yaml)") from None
    with response:
        if start and response.status != 206:
            start = 0  # server ignored the Range header: restart from scratch
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        _stream(response, part, start, total, dest.name)
    size = part.stat().st_size
    if total is not None and size != total:
        raise DataError(f"{url}: connection dropped after {size} of {total} bytes; "
                        f"rerun to resume ({part} is kept)")
    os.replace(part, dest)


def _stream(response, part: Path, start: int, total: int | None, label: str) -> None:
    with open(part, "ab" if start else "wb") as out, \
            tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=f"download {label}") as bar:
        while True:
            try:
                block = response.read(CHUNK)
            except OSError:  # connection reset mid-body: keep what we have, report below
                break
            if not block:
                break
            out.write(block)
            bar.update(len(block))


def _extract(archive: Path, target: Path, names: list[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m).name: m for m in zf.namelist()}
            for name in names:
                if name not in members:
                    if name == OFFICIAL_MAPPING:
                        continue
                    raise DataError(f"{archive}: has no member {name}")
                tmp = target / (name + ".tmp")
                with zf.open(members[name]) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.replace(tmp, target / name)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:  # zlib.error: a damaged deflated member
        archive.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)  # no half-extracted leftovers
        raise DataError(f"{archive}: corrupt zip archive ({err}); deleted, rerun to download again") from None


# ---------------------------------------------------------------- splits and prepared arrays

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


def write_prepared(out_dir: Path, arrays: dict[str, np.ndarray], extra: dict[str, object]) -> None:
    """Write arrays as .npy plus JSON files into a temporary sibling, then swap it in whole."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    for name, content in extra.items():
        (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) on a sibling temporary file, then rename it over `path`: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


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


def load_manifest(prepared: Path) -> dict:
    return json.loads((prepared / "manifest.json").read_text())


def manifest_digest(prepared: Path) -> str:
    """sha256 of manifest.json, which itself holds the sha256 of every prepared array."""
    return sha256_file(prepared / "manifest.json")
