"""Start `mlflow server` as a child process on a free local port and always stop it (used by tests and scripts)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.tools.server_process import free_port, stop_group, wait_healthy


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str, artifacts: Path | None = None, log: Path | None = None, timeout: float = 120.0
) -> Iterator[str]:
    """Yields the server's http://127.0.0.1:<port> once /health answers; kills its process group on exit.

    `artifacts`: a local directory the server proxies artifacts to (mlflow-artifacts:/); None keeps its default.
    """
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifacts is not None:
        cmd += ["--serve-artifacts", "--artifacts-destination", str(artifacts)]
    output = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process)
        if log:
            output.close()


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group of a child started with start_new_session, then SIGKILL whatever is left."""
    stop_group(process.pid)
    process.wait()
