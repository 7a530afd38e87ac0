"""The executor against other processes and the cluster it gets: DVC's repo lock held elsewhere is waited out
(DVC alone gives up after 3 s), and options no node can meet are refused instead of waited on for ever."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from dvc.lock import LockError

from pipeline.tools import parallel, ray_resources, repo_lock
from pipeline.tools.stop_signal import Stopped, StopSignal


@pytest.fixture
def stop():
    signals = StopSignal()
    yield signals
    signals.restore()


def held_for(tries: int, result: str = "done"):
    """An action that finds DVC's lock held `tries` times, then succeeds; and the list of its calls."""
    calls = []

    def action():
        calls.append(len(calls))
        if len(calls) <= tries:
            raise LockError("Unable to acquire lock")
        return result

    return action, calls


def test_a_lock_held_for_a_while_is_waited_out_and_said_once(stop, capsys):
    action, calls = held_for(3)
    assert repo_lock.while_locked(action, "train@a-0 ran; recording it", stop) == "done"
    assert len(calls) == 4
    assert capsys.readouterr().err.count("train@a-0 ran; recording it: waiting for another DVC process") == 1


def test_a_stop_signal_ends_the_wait(stop):
    action, calls = held_for(100)
    stop(signal.SIGINT, None)
    with pytest.raises(Stopped, match="SIGINT"):
        repo_lock.while_locked(action, "prepare", stop)
    assert len(calls) == 1


def test_past_its_patience_the_lock_error_stands(stop, monkeypatch):
    monkeypatch.setattr(repo_lock, "PATIENCE_S", -1)
    action, calls = held_for(100)
    with pytest.raises(LockError):
        repo_lock.while_locked(action, "prepare", stop)
    assert len(calls) == 1


def finishing_executor(stop: StopSignal, remote: str | None, monkeypatch) -> SimpleNamespace:
    """An executor whose stage train@a-0 ran, and DVC's lock is held for as long as it tries to record it."""
    monkeypatch.setattr(parallel.ray, "get", lambda ref: (0, "trained"))
    executor = SimpleNamespace(running={"ref": "train@a-0"}, stop=stop, args=SimpleNamespace(remote=remote))
    executor.record = lambda name, returned: held_for(100)[0]()
    return executor


def test_a_stage_that_ran_but_could_not_be_recorded_says_how_to_record_it(stop, monkeypatch):
    monkeypatch.setattr(repo_lock, "PATIENCE_S", -1)
    executor = finishing_executor(stop, None, monkeypatch)
    with pytest.raises(parallel.StageFailed, match=r"its outputs are in place: `dvc commit train@a-0` records it"):
        parallel.Executor.finish(executor, "ref", None)


def test_on_a_cluster_node_the_hint_is_left_out_as_the_outputs_were_put_back(stop, monkeypatch):
    monkeypatch.setattr(repo_lock, "PATIENCE_S", -1)
    executor = finishing_executor(stop, "shared", monkeypatch)
    with pytest.raises(parallel.StageFailed) as failed:
        parallel.Executor.finish(executor, "ref", None)
    assert "could not record it here" in str(failed.value) and "dvc commit" not in str(failed.value)


def test_a_stop_while_waiting_to_record_names_the_stage_left_unrecorded(stop, monkeypatch, capsys):
    executor = finishing_executor(stop, None, monkeypatch)
    stop(signal.SIGTERM, None)
    with pytest.raises(Stopped):
        parallel.Executor.finish(executor, "ref", None)
    assert "train@a-0 ran but is not recorded; `dvc commit train@a-0` records it" in capsys.readouterr().err


def test_a_lock_held_while_checking_a_stage_fails_the_run_in_one_line(stop, monkeypatch):
    monkeypatch.setattr(repo_lock, "PATIENCE_S", -1)
    locked = held_for(100)[0]
    monkeypatch.setattr(parallel, "command_if_changed", lambda root, name, clear_outputs: locked())
    executor = SimpleNamespace(root=Path("."), args=SimpleNamespace(remote=None), stop=stop)
    with pytest.raises(parallel.StageFailed, match="stage prepare: DVC could not say whether it changed: Unable"):
        parallel.Executor.command_if_changed(executor, "prepare")


def options(jobs=1, cpus=1.0, gpus=0.0, address=None) -> SimpleNamespace:
    return SimpleNamespace(jobs=jobs, cpus_per_run=cpus, gpus_per_run=gpus, address=address)


def node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_a_local_ray_gets_whole_cpus_and_runs_no_more_than_jobs_stages_at_once():
    half = options(jobs=3, cpus=0.5)
    assert ray_resources.local_cpus(half) == 2
    assert ray_resources.slots(half, ray_resources.local_cpus(half)) == 3  # 2 CPUs hold 4 half-CPU stages
    assert ray_resources.slots(options(cpus=0.5, address="head:6379"), 2) == 4  # a cluster: what it holds


def test_requests_no_alive_node_can_meet_are_named():
    nodes = [node(2), node(16, gpus=1, alive=False)]
    assert ray_resources.unschedulable(options(cpus=2), nodes) is None
    assert "--cpus-per-run 4: no node of the Ray cluster has that many CPUs (at most 2)" in (
        ray_resources.unschedulable(options(cpus=4), nodes)
    )
    assert "--gpus-per-run 0.25: no node of the Ray cluster has that much GPU (at most 0)" in (
        ray_resources.unschedulable(options(gpus=0.25), nodes)
    )
    assert ray_resources.unschedulable(options(gpus=0.25), [node(2), node(4, gpus=1)]) is None


def test_gpus_asked_of_a_machine_without_one_are_refused_once_ray_has_started(monkeypatch, capsys):
    monkeypatch.setenv("COMPRESSNET_ROOT", str(Path(__file__).parents[1]))  # this project's dvc.yaml
    monkeypatch.chdir(Path(__file__).parents[1])
    monkeypatch.setattr(parallel.tracking, "setup", lambda name: "0")
    monkeypatch.setattr(parallel, "start_ray", lambda args: None)
    monkeypatch.setattr(parallel.ray, "nodes", lambda: [node(2)])
    shut_down = []
    monkeypatch.setattr(parallel.ray, "shutdown", lambda: shut_down.append(True))
    monkeypatch.setattr(parallel, "Executor", lambda *args: pytest.fail("stages dispatched"))
    monkeypatch.setattr(parallel.lock_entries, "order_lock", lambda *args: None)  # this checkout's dvc.lock stays as is
    handler = signal.getsignal(signal.SIGINT)
    assert parallel.main(["--jobs", "1", "--gpus-per-run", "0.25"]) == 2
    assert "parallel: error: --gpus-per-run 0.25: no node" in capsys.readouterr().err
    assert shut_down == [True] and signal.getsignal(signal.SIGINT) is handler
