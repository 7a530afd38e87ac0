"""data.source is a DVC dependency of prepare, whatever it names: one changed byte in a directory of IDX files, or
in the listing of the official files' SHA-256s, makes `dvc status` report prepare and `dvc repro` rerun it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.lib.config_sections import OFFICIAL_SOURCE
from pipeline.lib.idx import read_idx
from tests.conftest import TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir, write_idx, write_sha256sums

pytestmark = pytest.mark.slow


def changed_deps(root: Path, env: dict) -> dict:
    """What `dvc status prepare` reports changed in prepare's dependencies ({} when it is up to date)."""
    status = json.loads(run(["dvc", "status", "--json", "prepare"], root, env))
    entries = [entry for entry in status.get("prepare", []) if isinstance(entry, dict)]
    return {path: why for entry in entries for path, why in entry.get("changed deps", {}).items()}


def test_one_changed_byte_in_a_source_directory_reruns_prepare(tmp_path):
    data = make_emnist_dir(tmp_path / "emnist")
    root, env = make_project(tmp_path / "project", {"tiny": TINY_SPEC}, data_source=str(data))
    run(["dvc", "repro", "prepare"], root, env)
    assert changed_deps(root, env) == {}
    before = np.load(root / "data" / "prepared" / "test_images.npy")

    images_file = data / "test-images-idx3-ubyte.gz"
    images = read_idx(images_file, "images").copy()
    images[0, 3, 5] ^= 0x01  # one bit of one pixel
    write_idx(images_file, images)
    write_sha256sums(data)  # the directory stays self-consistent: only DVC can notice the change

    assert changed_deps(root, env) == {str(data): "modified"}
    assert "Running stage 'prepare'" in run(["dvc", "repro", "prepare"], root, env)
    after = np.load(root / "data" / "prepared" / "test_images.npy")
    assert np.count_nonzero(after != before) == 1
    assert changed_deps(root, env) == {}


def test_the_official_sources_pinned_checksums_are_a_dependency(tmp_path):
    """The default source is the committed listing of the official files' SHA-256s, a dependency DVC hashes like
    any other file (so a new pin reruns prepare, as the directory test above shows for a changed byte)."""
    from dvc.repo import Repo

    root, _ = make_project(tmp_path / "project", {"tiny": TINY_SPEC})
    prepare = next(stage for stage in Repo(str(root)).index.stages if stage.name == "prepare")
    assert str(root / OFFICIAL_SOURCE) in {dep.fs_path for dep in prepare.deps}
