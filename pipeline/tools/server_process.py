"""Servers run as process groups of their own: a free port, waiting for one to answer /health (and be the one
started, not another on the same port), stopping a group, and whether a pid still names a live process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import psutil


class ServerError(RuntimeError):
    """The servers cannot be started or stopped; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Until the server answers /health, and it is this process group's (not another server on the same port)."""
    deadline = time.monotonic() + timeout
    while not answers_health(url):
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited with code {process.returncode} before answering")
        if time.monotonic() >= deadline:
            raise ServerError(f"mlflow server at {url} did not answer /health within {timeout:.0f} s")
        time.sleep(0.5)
    if not listens(process.pid, urllib.parse.urlsplit(url).port):
        raise ServerError(f"another server answers at {url}, not the mlflow server started here: its port is taken")


def answers_health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def listens(group: int, port: int) -> bool:
    sockets = psutil.net_connections("tcp")  # a pid only for the caller's own processes (all of them as root)
    return any(s.status == psutil.CONN_LISTEN and s.laddr.port == port and group_of(s.pid) == group for s in sockets)


def group_of(pid: int | None) -> int | None:
    try:
        return os.getpgid(pid) if pid else None
    except ProcessLookupError:
        return None


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_group(pid: int, wait: float = 10.0) -> None:
    """SIGTERM a process group started with start_new_session, then SIGKILL what is left after `wait` seconds."""
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.2)
    signal_group(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: not the server this folder started
        return False
    return True


def process_started(pid: int) -> float | None:
    """When the process with this pid started (seconds since the epoch), or None if there is none."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
