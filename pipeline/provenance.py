"""dvc.lock, read (under a file lock in .dvc/tmp): the hashes DVC recorded for the pipeline's stages. Never runs dvc,
never imports it.

A stage records what DVC has already locked when it runs (its upstream stages' entries and outputs); run
outside DVC (no DVC_ROOT, or no dvc.lock yet) it records "unknown".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import yaml
from filelock import FileLock

UNKNOWN = "unknown"
WRITE_WAIT_S = -1  # how long lock_guard waits: -1, as long as a commit takes (filelock: no timeout)


class _LockLoader(yaml.SafeLoader):
    """YAML 1.2 floats: DVC writes 1e-07, which PyYAML's YAML 1.1 rules would read as a string."""


_LockLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def stage_name(kind: str, variant: str, seed: int) -> str:
    """A matrix stage of dvc.yaml: stage_name('train', 'model01', 0) == 'train@model01-0'."""
    return f"{kind}@{variant}-{seed}"


def dvc_root() -> Path | None:
    """The DVC project running this stage (DVC sets DVC_ROOT for every stage command); None outside DVC."""
    root = os.environ.get("DVC_ROOT")
    return Path(root) if root else None


def read_lock(root: Path | None) -> dict[str, dict]:
    """Stage name -> its dvc.lock entry; {} without a root or a dvc.lock. Read under lock_guard."""
    if root is None or not (root / "dvc.lock").is_file():
        return {}
    with lock_guard(root):
        text = (root / "dvc.lock").read_text()
    return (yaml.load(text, Loader=_LockLoader) or {}).get("stages") or {}


@contextlib.contextmanager
def lock_guard(root: Path) -> Iterator[None]:
    """Held while dvc.lock is read, and while the parallel executor has DVC write it: DVC rewrites the file in place
    (truncate, then write), so a stage starting while another is committed could read half of it. Outside a DVC
    project (no .dvc/) nothing writes it concurrently."""
    if not (root / ".dvc").is_dir():
        yield
        return
    (root / ".dvc" / "tmp").mkdir(exist_ok=True)
    with FileLock(root / ".dvc" / "tmp" / "compressnet-dvc-lock.lock", timeout=WRITE_WAIT_S):
        yield


def entry_digest(lock: dict[str, dict], stage: str) -> str:
    """sha256 of a stage's lock entry as canonical JSON (sorted keys, no spaces); 'unknown' if not locked."""
    if stage not in lock:
        return UNKNOWN
    canonical = json.dumps(lock[stage], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def out_md5(lock: dict[str, dict], path: str) -> str:
    """md5 DVC recorded for `path` (relative to the project root) as the output of a stage."""
    for entry in lock.values():
        for out in entry.get("outs", []):
            if out.get("path") == path:
                return out.get("md5", UNKNOWN)
    return UNKNOWN


def provenance(inputs: dict[str, Path], stages: dict[str, str]) -> dict[str, str]:
    """What dvc.lock says about a running stage's inputs: {'<role>_md5': md5 of each input path,
    '<role>_lock_sha256': digest of each upstream stage's entry}; 'unknown' outside DVC."""
    root = dvc_root()
    lock = read_lock(root)
    record = {f"{role}_md5": out_md5(lock, relative_path(path, root)) for role, path in inputs.items()}
    record.update({f"{role}_lock_sha256": entry_digest(lock, stage) for role, stage in stages.items()})
    return record


def relative_path(path: Path, root: Path | None) -> str:
    """`path` relative to the project root, as dvc.lock writes it; "unknown" outside the project."""
    if root is None:
        return UNKNOWN
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return UNKNOWN
