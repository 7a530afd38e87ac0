"""dvc.lock is read and written under one guard: DVC rewrites it in place, so under the parallel executor a stage
starting while another stage is committed could otherwise read half of it."""

from __future__ import annotations

from types import SimpleNamespace

import filelock
import pytest
import yaml

from pipeline import provenance
from pipeline.tools import lock_entries, parallel
from pipeline.tools.stage_clock import StageClock

LOCK = "schema: '2.0'\nstages:\n  prepare:\n    cmd: python -m pipeline.stages.prepare\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.lock").write_text(LOCK)
    monkeypatch.setattr(provenance, "WRITE_WAIT_S", 0)  # a held guard fails at once instead of waiting
    return tmp_path


def test_a_stage_does_not_read_dvc_lock_while_the_executor_writes_it(project):
    with provenance.lock_guard(project), pytest.raises(filelock.Timeout):
        provenance.read_lock(project)
    assert provenance.read_lock(project) == {"prepare": {"cmd": "python -m pipeline.stages.prepare"}}


def test_the_executor_does_not_write_dvc_lock_while_a_stage_reads_it(project):
    with provenance.lock_guard(project), pytest.raises(filelock.Timeout):
        lock_entries.set_lock_entry(project, "train@tiny-0", {"cmd": "python -m pipeline.stages.train tiny --seed 0"})
    assert (project / "dvc.lock").read_text() == LOCK

    lock_entries.set_lock_entry(project, "train@tiny-0", {"cmd": "python -m pipeline.stages.train tiny --seed 0"})
    assert set(provenance.read_lock(project)) == {"prepare", "train@tiny-0"}


def test_outside_a_dvc_project_reading_needs_no_guard(tmp_path):
    (tmp_path / "dvc.lock").write_text(LOCK)
    assert set(provenance.read_lock(tmp_path)) == {"prepare"}
    assert not (tmp_path / ".dvc").exists()


def test_the_executor_does_not_reorder_dvc_lock_while_a_stage_reads_it(project):
    with provenance.lock_guard(project), pytest.raises(filelock.Timeout):
        lock_entries.order_lock(project, ["prepare"])
    assert (project / "dvc.lock").read_text() == LOCK


def test_ordering_the_lock_keeps_entries_it_was_not_given_after_those_it_was(project):
    lock = project / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  train@a-0:\n    cmd: t\n  report:\n    cmd: r\n  prepare:\n    cmd: p\n")
    lock_entries.order_lock(project, ["prepare", "train@a-0"])
    assert list(yaml.safe_load(lock.read_text())["stages"]) == ["prepare", "train@a-0", "report"]


def test_the_executor_commits_a_finished_stage_only_under_the_guard(project, monkeypatch):
    committed = []

    class RecordingRepo:  # stands in for dvc.repo.Repo: records the commit and whether the guard was held then
        def __init__(self, root):
            assert root == str(project)

        def commit(self, name, force):
            with pytest.raises(filelock.Timeout):
                provenance.read_lock(project)
            committed.append(name)

    monkeypatch.setattr(parallel, "Repo", RecordingRepo)
    monkeypatch.setattr(parallel.ray, "get", lambda ref: (0, "the stage's output"))
    executor = SimpleNamespace(root=project, args=SimpleNamespace(remote=None), done=set(), ran=0)  # what finish reads
    executor.record = lambda name, returned: parallel.Executor.record(executor, name, returned)
    executor.stop = SimpleNamespace(check=lambda: None)
    executor.clock = StageClock()
    executor.clock.start("train@tiny-0")
    progress = SimpleNamespace(update=lambda: None)

    executor.running = {"ref": "train@tiny-0"}
    with provenance.lock_guard(project), pytest.raises(filelock.Timeout):
        parallel.Executor.finish(executor, "ref", progress)
    assert committed == [] and executor.done == set() and executor.ran == 0

    executor.running = {"ref": "train@tiny-0"}
    parallel.Executor.finish(executor, "ref", progress)
    assert committed == ["train@tiny-0"] and executor.done == {"train@tiny-0"} and executor.ran == 1
