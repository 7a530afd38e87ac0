"""The record's files as dvc.lock names them: read once (what is checked is what is copied), hashed as dvc.lock
records a file or a directory, and removed where the record no longer keeps them as they were."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from dvc_data.hashfile.tree import Tree


def recorded_files(entries: dict) -> dict[str, str]:
    """Path -> md5 of each file under reports/ that the entries name as an output: what the record copies."""
    return {
        out["path"]: out.get("md5")
        for entry in entries.values()
        for out in entry.get("outs", [])
        if out["path"].startswith("reports/")
    }


def read_files(checkout: Path, paths: list[str]) -> dict[str, bytes | None]:
    """Each file's bytes, a directory's as each file in it, read once: what is checked is what is copied (None: no
    such file)."""
    contents = {}
    for path in paths:
        where = checkout / path
        if where.is_dir():
            inside = sorted(file for file in where.rglob("*") if file.is_file())
            contents |= {file.relative_to(checkout).as_posix(): file.read_bytes() for file in inside}
        else:
            contents[path] = where.read_bytes() if where.is_file() else None
    return contents


def content_md5(contents: dict[str, bytes | None], path: str) -> str:
    """The md5 dvc.lock records for path, as read into contents: a file's, or DVC's of a directory's listing."""
    if path in contents:
        return hashlib.md5(contents[path]).hexdigest() if contents[path] is not None else "no such file"
    inside = {name.removeprefix(f"{path}/"): data for name, data in contents.items() if name.startswith(f"{path}/")}
    if not inside:
        return "no such file"
    tree = Tree.from_list([{"relpath": name, "md5": hashlib.md5(data).hexdigest()} for name, data in inside.items()])
    tree.digest()
    return tree.hash_info.value


def stale_inputs(checkout: Path, entry: dict, left_out: set[str]) -> list[str]:
    """The entry's inputs under reports/ that the checkout no longer holds as the stage read them, or that hold a file
    of left_out (which the record's copy would lack)."""
    deps = [dep for dep in entry.get("deps", []) if dep["path"].startswith("reports/")]
    now = read_files(checkout, [dep["path"] for dep in deps])
    return [
        dep["path"]
        for dep in deps
        if content_md5(now, dep["path"]) != dep.get("md5")
        or any(path == dep["path"] or path.startswith(f"{dep['path']}/") for path in left_out)
    ]


def remove_outputs(record: Path, entries: dict) -> None:
    """The entries' outputs under reports/ gone from the record, files or directories: those of stages it no longer
    keeps as they were, so that a directory copied again holds no file left from before."""
    for path in recorded_files(entries):
        if (record / path).is_dir():
            shutil.rmtree(record / path)
        else:
            (record / path).unlink(missing_ok=True)
