"""The tracking server's state.json names its MLflow process by pid and start time: a pid that now belongs to
another process (after a reboot or a crash) is never taken for the server, nor signalled."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.tools import tracking_server


@pytest.fixture
def stranger():
    """A live process in its own session that is not a tracking server."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    yield process.pid
    process.kill()
    process.wait()


def write_state(folder, pid: int, started: float | None) -> None:
    folder.mkdir(exist_ok=True)
    state = {"url": "http://127.0.0.1:1", "mlflow_pid": pid, "mlflow_started": started, "postgres_port": 1}
    (folder / "state.json").write_text(json.dumps(state))


def test_a_state_is_running_only_while_its_pid_is_the_process_it_started():
    me, started = os.getpid(), tracking_server.process_started(os.getpid())
    assert tracking_server.still_running({"mlflow_pid": me, "mlflow_started": started})
    assert not tracking_server.still_running({"mlflow_pid": me, "mlflow_started": started - 60})
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not tracking_server.still_running({"mlflow_pid": int(finished.stdout), "mlflow_started": started})


def test_stop_never_signals_a_process_that_took_the_servers_pid(tmp_path, stranger):
    write_state(tmp_path, stranger, tracking_server.process_started(stranger) - 3600)  # the server started earlier
    tracking_server.stop_mlflow(tmp_path)
    assert tracking_server.alive(stranger)
    assert not (tmp_path / "state.json").exists()  # the stale state is forgotten


def test_status_says_not_running_when_the_pid_is_another_process(tmp_path, stranger, capsys):
    write_state(tmp_path, stranger, tracking_server.process_started(stranger) - 3600)
    assert tracking_server.main(["status", "--dir", str(tmp_path)]) == 3
    assert "not running" in capsys.readouterr().out


def test_a_state_from_before_start_times_knows_the_server_by_its_command(stranger):
    assert not tracking_server.still_running({"mlflow_pid": stranger})  # a pid, and not an mlflow command
    script = "import time; print('up', flush=True); time.sleep(600)"
    command = [sys.executable, "-c", script, "mlflow", "server"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            server.stdout.readline()  # Popen may return while exec still sets the command line up: wait until it runs
            assert tracking_server.still_running({"mlflow_pid": server.pid})
        finally:
            server.kill()  # leaving the block closes its pipe and waits for it


def test_stop_stops_the_server_its_state_names(tmp_path, stranger):
    write_state(tmp_path, stranger, tracking_server.process_started(stranger))
    tracking_server.stop_mlflow(tmp_path)
    assert not tracking_server.alive(stranger)
