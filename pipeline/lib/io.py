"""File I/O every layer shares: atomic writes (never a half-written file under its final name) and hashing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

CHUNK = 1 << 20


class DataError(RuntimeError):
    """A data file is missing, corrupt or inconsistent; the message names the file."""


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) on a sibling temporary file, then rename it over `path`: never half-written.

    The temporary name is unique (stages run by hand in parallel never share one) and removed if writing fails;
    file and directory are fsynced, so after a power loss `path` holds the old bytes or the new ones, never none.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def temporary_sibling(path: Path) -> Path:
    """A new empty file beside `path` with a unique name, readable as a normal output would be."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, content: object, **options) -> None:
    """JSON with a final newline, written atomically; NaN is an error (it is not JSON)."""
    write_text(path, json.dumps(content, indent=2, allow_nan=False, **options) + "\n")


def write_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def save_torch(obj: object, path: Path) -> None:
    import torch  # not every caller of this module needs torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: Path, missing: str) -> dict:
    """A .pt/.ckpt file of plain data and tensors, loaded without running pickled code (weights_only): a file from
    a shared remote or a colleague that carries code is refused, never executed. `missing`: what to do instead."""
    import pickle

    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {missing}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: refused: not a plain data file of this project, or corrupt ({reason})") from None
    if not isinstance(saved, dict):
        raise DataError(f"{path}: refused: expected a dict of metadata and tensors, got {type(saved).__name__}")
    return saved


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    return digest.hexdigest()


def md5_file(path: Path) -> str:
    """The md5 DVC 3 records for a file output (of its bytes as they are)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()
