"""The many-writers tracking server (pipeline.tools.tracking_server): PostgreSQL 15 as the backend store, artifacts
served from a local folder; the whole tiny matrix run through the Ray executor against it; stop, start again, and
every run is still there."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tools.server_process import free_port
from tests.conftest import TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

pytestmark = pytest.mark.slow
VARIANTS = {"tinyA": TINY_SPEC, "tinyB": {**TINY_SPEC, "latent_dim": 4}}
EXPERIMENT = "pg-matrix"


def server(action: str, folder: Path, port: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.tools.tracking_server", action, "--dir", str(folder), "--port", str(port)]
    return subprocess.run([*cmd, "--workers", "2"], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A running server in a folder the postgres user can reach (pytest's own tmp root is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="tracking-server-"))
    base.chmod(0o755)
    folder, port = base / "server", free_port()
    started = server("start", folder, port)
    assert started.returncode == 0, started.stderr
    yield {"folder": folder, "port": port, "url": f"http://127.0.0.1:{port}", "stdout": started.stdout}
    server("stop", folder, port)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def matrix(served, tmp_path_factory) -> dict:
    data = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    root, env = make_project(tmp_path_factory.mktemp("project"), VARIANTS, epochs=1, data_source=str(data))
    env = {**env, "MLFLOW_TRACKING_URI": served["url"], "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    output = run([sys.executable, "-m", "pipeline.tools.parallel", "--jobs", "2"], root, env, timeout=1800)
    return {"root": root, "env": env, "output": output}


def runs_by_stage(url: str) -> dict[str, str]:
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return {r.data.tags["stage"]: r.info.status for r in client.search_runs([experiment.experiment_id])}


def test_start_prints_the_uri_to_export(served):
    assert f"export MLFLOW_TRACKING_URI={served['url']}" in served["stdout"]
    assert (served["folder"] / "postgres" / "data" / "PG_VERSION").read_text().strip() == "15"
    assert oct((served["folder"] / "password").stat().st_mode & 0o777) == "0o600"


def test_the_password_is_in_no_command_line_and_readable_by_its_owner_only(served):
    password = (served["folder"] / "password").read_text()
    commands = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "mlflow server" in commands or "mlflow.server" in commands or "uvicorn" in commands
    assert password not in commands
    assert password not in (served["folder"] / "mlflow.log").read_text()


def test_the_parallel_matrix_logs_every_stage_into_postgres(served, matrix):
    stages = runs_by_stage(served["url"])
    assert stages == {
        "classifier": "FINISHED",
        "train@tinyA-0": "FINISHED",
        "train@tinyB-0": "FINISHED",
        "report": "FINISHED",
    }  # evaluate logs into its training run
    assert not (matrix["root"] / "mlflow.db").exists()  # nothing went to the embedded sqlite store
    artifacts = served["folder"] / "artifacts"
    assert any(artifacts.rglob("report.md")), "the report's artifacts went to the served store"
    assert json.loads(run(["dvc", "status", "--json"], matrix["root"], matrix["env"])) == {}


def test_stop_and_start_keep_every_run(served, matrix):
    before = runs_by_stage(served["url"])
    assert server("stop", served["folder"], served["port"]).returncode == 0
    stopped = server("status", served["folder"], served["port"])
    assert stopped.returncode == 3 and "not running" in stopped.stdout
    assert server("start", served["folder"], served["port"]).returncode == 0
    assert runs_by_stage(served["url"]) == before


def test_postgres_runs_as_its_own_user_when_started_as_root(served):
    expected = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert (served["folder"] / "postgres").owner() == expected
