"""What a node compares with the executor before it runs a stage (--remote): DVC's hash of every file and directory
the stage depends on that no stage writes, keyed by the path dvc.yaml gives it (params come from the executor)."""

from __future__ import annotations

import shutil

import pytest
from dvc.repo import Repo

from pipeline.tools import ray_tasks

DVC_YAML = """stages:
  make:
    cmd: cp code.py made
    deps: [code.py]
    outs: [made]
  use:
    cmd: cat made data/a > used
    deps: [made, code.py, data, not-here-yet]
    params: [lr]
    outs: [used]
"""


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "executor"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a").write_text("images")
    (root / "code.py").write_text("print('stage')\n")
    (root / "params.yaml").write_text("lr: 0.003\n")
    (root / "dvc.yaml").write_text(DVC_YAML)
    Repo.init(str(root), no_scm=True).close()
    return root


def digests(root):
    with Repo(str(root)) as repo:
        return ray_tasks.source_digests(repo, "use")


def test_code_and_a_data_directory_are_compared_and_outputs_are_not(checkout):
    found = digests(checkout)
    assert set(found) == {"code.py", "data"}  # not `made` (a stage writes it), a missing path, or the params
    assert found["data"].endswith(".dir")


def test_a_node_with_other_data_or_code_differs_in_exactly_that_path(checkout, tmp_path):
    node = tmp_path / "node"
    shutil.copytree(checkout, node)
    assert digests(node) == digests(checkout)

    (node / "data" / "a").write_text("other images")
    executor, here = digests(checkout), digests(node)
    assert [path for path in executor if here.get(path) != executor[path]] == ["data"]

    (node / "code.py").write_text("print('another commit')\n")
    here = digests(node)
    assert sorted(path for path in executor if here.get(path) != executor[path]) == ["code.py", "data"]
