"""File I/O every layer shares: atomic writes (never a half-written file under its final name) and hashing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
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
    remove_stale_temporaries(path)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temporary_prefix(path: Path) -> str:
    """The name every temporary of `path` starts with: the writer's host and pid tell a live one from a stale one
    (also where several machines share a checkout)."""
    return f".{path.name}.{HOST}.{os.getpid()}."


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries of `path` left by writers on this host that died (SIGKILL, power loss) before cleaning
    up; a live writer's, and other hosts', stay. A stale file inside a directory output would otherwise become part
    of what DVC hashes."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(HOST)}\.(\d+)\.[A-Za-z0-9_]+\.tmp")
    for stale in path.parent.iterdir():
        found = pattern.fullmatch(stale.name)
        if found and not pid_alive(int(found.group(1))):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def temporary_sibling(path: Path) -> Path:
    """A new empty file beside `path` with a unique name, readable as a normal output would be."""
    fd, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
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

    buffer = io.BytesIO()  # torch's own file writer turns a full disk into a RuntimeError that names no file
    torch.save(obj, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


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
