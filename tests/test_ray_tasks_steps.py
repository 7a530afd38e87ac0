"""A stage on a cluster node (ray_tasks.run_on_node, called here as the Ray task would run it): a DVC error before
the stage's command runs names the step that raised it, not always the pull."""

from __future__ import annotations

from pathlib import Path

import pytest
from dvc.exceptions import DvcException

from pipeline.tools import ray_tasks

run_on_node = ray_tasks.run_on_node._function  # the task's own function, without Ray


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / ".dvc").mkdir()  # a DVC project (`dvc init` would make it)
    monkeypatch.setenv(ray_tasks.CHECKOUT_ENV, str(root))
    monkeypatch.setattr(ray_tasks, "source_digests", lambda repo, name: {})
    return root


class FailingRepo:
    """Stands in for dvc.repo.Repo: raises at the step named."""

    def __init__(self, root: str, failing: str = "") -> None:
        if failing == "open":
            raise DvcException("not a DVC repository")

    def pull(self, **kwargs) -> None:
        raise DvcException("remote 'shared' has no such file")


def test_a_checkout_dvc_cannot_open_is_said_so(checkout, monkeypatch):
    monkeypatch.setattr(ray_tasks, "Repo", lambda root: FailingRepo(root, "open"))
    code, message, returned = run_on_node("train@a-0", "true", ["prepare"], {}, {}, "shared", {})
    assert (code, returned) == (1, {})
    assert message.endswith(": reading its DVC project failed: not a DVC repository")


def test_a_failed_pull_names_what_it_pulled_and_from_where(checkout, monkeypatch):
    monkeypatch.setattr(ray_tasks, "Repo", FailingRepo)
    code, message, _ = run_on_node("train@a-0", "true", ["prepare"], {}, {}, "shared", {})
    assert code == 1 and message.endswith(
        ": pulling prepare from DVC remote 'shared' failed: remote 'shared' has no such file"
    )
