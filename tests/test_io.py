"""Atomic, durable writes: a file under its final name is never half-written, even across a crash."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.lib import io
from pipeline.lib.io import DataError
from pipeline.lib.prepared import write_prepared


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_temporary_names_are_unique_per_write(tmp_path):
    target, seen = tmp_path / "out.txt", []

    def inner(tmp):
        seen.append(tmp)
        tmp.write_text("inner")

    def outer(tmp):
        seen.append(tmp)
        io.atomic_write(target, inner)  # a second writer of the same file while the first is writing
        tmp.write_text("outer")

    io.atomic_write(target, outer)
    assert seen[0] != seen[1] and seen[0].parent == seen[1].parent == tmp_path
    assert target.read_text() == "outer"


def test_file_and_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = io.fsync_path
    monkeypatch.setattr(io, "fsync_path", lambda path: (synced.append(path), real(path)))
    io.write_text(tmp_path / "a.txt", "x")
    assert synced[0].parent == tmp_path and synced[0].name.endswith(".tmp")  # the data, before the rename
    assert synced[1] == tmp_path  # the rename itself
    assert oct((tmp_path / "a.txt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_prepared_keeps_the_previous_output_when_a_write_fails(tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    write_prepared(out, {"a": np.zeros(3, np.uint8)}, {"manifest.json": {"n": 1}})
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_prepared(out, {"a": np.ones(3, np.uint8)}, {"manifest.json": {"n": 2}})
    monkeypatch.undo()
    assert np.load(out / "a.npy").tolist() == [0, 0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_write_prepared_replaces_a_previous_output_whole(tmp_path):
    out = tmp_path / "prepared"
    write_prepared(out, {"a": np.zeros(3, np.uint8), "b": np.zeros(1, np.uint8)}, {"manifest.json": {"n": 1}})
    write_prepared(out, {"a": np.ones(3, np.uint8)}, {"manifest.json": {"n": 2}})
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_write_prepared_never_wipes_a_directory_that_is_not_prepared_data(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="not a prepared data set"):
        write_prepared(home, {"a": np.zeros(3, np.uint8)}, {"manifest.json": {}})
    assert (home / "thesis.tex").read_text() == "years of work"


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid names no process now
    return process.pid


def test_a_killed_writers_temporaries_are_removed_by_the_next_write_and_a_live_ones_stay(tmp_path):
    """SIGKILL leaves a temporary behind (nothing runs on SIGKILL); the next write of that output sweeps it."""
    target = tmp_path / "out.json"
    stale_file = tmp_path / f".out.json.{io.HOST}.{dead_pid()}.abc.tmp"
    stale_file.write_text("half")
    live = tmp_path / f"{io.temporary_prefix(target)}xyz.tmp"  # this process's: a write in flight
    live.write_text("in flight")
    other = tmp_path / f".other.json.{io.HOST}.{dead_pid()}.abc.tmp"  # another output's: not this write's business
    other.write_text("half")
    elsewhere = tmp_path / f".out.json.another-host.{dead_pid()}.abc.tmp"  # a shared checkout: pids of another host
    elsewhere.write_text("in flight there")
    io.write_json(target, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", live.name, other.name, elsewhere.name])


def test_a_killed_prepare_leaves_no_directory_that_the_next_one_keeps(tmp_path):
    out = tmp_path / "prepared"
    stale_dir = tmp_path / f".prepared.{io.HOST}.{dead_pid()}.abc.tmp"
    stale_dir.mkdir()
    (stale_dir / "train_images.npy").write_bytes(b"half")
    write_prepared(out, {"x": np.zeros(3, np.uint8)}, {"manifest.json": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
