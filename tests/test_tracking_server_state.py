"""The tracking server's state.json names its MLflow process by pid and start time: a pid that now belongs to
another process (after a reboot or a crash) is never taken for the server, nor signalled; it is written atomically,
and a corrupt one is reported in one line. `start` refuses a port another server answers on, and whatever stops it
(Ctrl-C included) stops what it had started."""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
import pytest

from pipeline.tools import tracking_server

POSTGRES_INSTALLED = any((b / "initdb").exists() for b in tracking_server.PG_BINS) or shutil.which("initdb")


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


class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the name http.server calls)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def foreign_server():
    """Another HTTP server on a port of 127.0.0.1 that answers /health with 200, as a running mlflow server would."""
    server = http.server.HTTPServer(("127.0.0.1", 0), Healthy)  # listening once constructed
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def server_dir():
    """A folder for the server that the postgres user can reach (pytest's own tmp root is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="tracking-server-"))
    base.chmod(0o755)
    yield base / "server"
    if (base / "server" / "postgres" / "data").exists():  # a failed test must not leave PostgreSQL running
        with contextlib.suppress(tracking_server.ServerError):
            tracking_server.stop_postgres(base / "server")
    shutil.rmtree(base, ignore_errors=True)


def processes_mentioning(folder: Path) -> list[str]:
    """The command lines of live processes that name the folder (the mlflow server and the postmaster do)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        command = " ".join(process.info["cmdline"] or [])
        if process.info["status"] != psutil.STATUS_ZOMBIE and str(folder) in command:
            found.append(command)
    return found


def test_start_refuses_a_port_another_server_answers_on(server_dir, foreign_server, capsys):
    argv = ["start", "--dir", str(server_dir), "--port", str(foreign_server), "--workers", "1"]
    assert tracking_server.main(argv) == 1
    out, err = capsys.readouterr()
    assert "export" not in out
    assert err.count("\n") == 1 and f"port {foreign_server} on 127.0.0.1 is already in use" in err
    assert "--port N" in err
    assert not (server_dir / "postgres").exists() and not (server_dir / "state.json").exists()
    assert processes_mentioning(server_dir) == []


def test_a_health_answer_from_another_server_is_not_taken_for_the_one_started(foreign_server):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        with pytest.raises(tracking_server.ServerError, match="another server answers"):
            tracking_server.wait_healthy(f"http://127.0.0.1:{foreign_server}", process, timeout=60)
    finally:
        process.kill()
        process.wait()


def test_ctrl_c_during_start_stops_what_it_had_started(server_dir, monkeypatch):
    assert POSTGRES_INSTALLED, "needs PostgreSQL's server (initdb, pg_ctl): the Debian image's postgresql package"
    started = []

    def interrupted(url, process, timeout):
        started.append(process.pid)
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking_server, "wait_healthy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tracking_server.start(server_dir, tracking_server.free_port(), workers=1)
    assert len(started) == 1 and not tracking_server.alive(started[0])  # the mlflow server
    assert processes_mentioning(server_dir) == []  # nor PostgreSQL
    assert not (server_dir / "state.json").exists()


def test_ctrl_c_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking_server, "start", interrupted)
    assert tracking_server.main(["start", "--dir", str(tmp_path)]) == 130
    assert capsys.readouterr() == ("", "tracking_server: interrupted\n")


@pytest.mark.parametrize("action", ["status", "stop", "start"])
def test_a_corrupt_state_is_one_line_that_says_what_may_still_run(tmp_path, action, capsys):
    write_state(tmp_path, os.getpid(), tracking_server.process_started(os.getpid()))
    whole = (tmp_path / "state.json").read_text()
    (tmp_path / "state.json").write_text(whole[: len(whole) // 2])  # what a crash mid-write would have left
    assert tracking_server.main([action, "--dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert f"{tmp_path / 'state.json'} is corrupt" in err and f"--artifacts-destination {tmp_path}/" in err
    assert (tmp_path / "state.json").exists()  # left for whoever cleans up by hand


def test_a_failed_state_write_leaves_the_previous_state_whole(tmp_path, monkeypatch):
    write_state(tmp_path, 1, 1.0)
    before = (tmp_path / "state.json").read_text()

    def disk_full(path, text, *args, **kwargs):
        with open(path, "w") as file:
            file.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    state = {"url": "http://127.0.0.1:2", "mlflow_pid": os.getpid(), "postgres_port": 2}
    with pytest.raises(OSError, match="No space left"):
        tracking_server.save_state(tmp_path, state)
    monkeypatch.undo()
    assert (tmp_path / "state.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no half-written temporary either


def test_an_os_error_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "state.json"))

    monkeypatch.setattr(tracking_server, "start", disk_full)
    assert tracking_server.main(["start", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"tracking_server: error: {tmp_path / 'state.json'}: No space left on device\n"
