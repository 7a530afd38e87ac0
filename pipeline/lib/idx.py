"""EMNIST's files as they come: IDX arrays (gzip or plain), the label mapping, SHA256SUMS checks."""

from __future__ import annotations

import gzip
import math
import re
import zlib
from pathlib import Path

import numpy as np

from pipeline.lib.io import CHUNK, DataError, sha256_file

IDX_MAGIC = {"images": 2051, "labels": 2049}
MAX_IDX_BYTES = 2**31  # 2 GiB: all of EMNIST ByClass's train images are 0.6 GB
# The official EMNIST-Balanced mapping (label -> character); used when a directory has no mapping file.
BALANCED_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"


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
    dims = [int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)]
    expected = math.prod(dims)  # Python ints: dims that overflow int64 still compare honestly
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says {dims[0]} items ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(tuple(dims))


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if not gzipped:
                return f.read()
            parts, total = [], 0
            with gzip.GzipFile(fileobj=f) as unzipped:
                while block := unzipped.read(CHUNK):
                    total += len(block)
                    if total > MAX_IDX_BYTES:  # a gzip bomb stops here instead of filling the memory
                        raise DataError(f"{path}: decompresses to more than {MAX_IDX_BYTES} bytes, an IDX file's limit")
                    parts.append(block)
            return b"".join(parts)
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
    return parse_sha256sums(path) if path.exists() else {}


def parse_sha256sums(path: Path) -> dict[str, str]:
    """{file name: sha256} from a `sha256sum` listing."""
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
