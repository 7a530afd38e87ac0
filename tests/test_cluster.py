"""A two-node Ray cluster on this machine: a head whose checkout runs the executor and no stage (0 CPUs), and a second
node with its own checkout, a clone, that runs every stage. The node gets its inputs and gives back its outputs only
through a DVC remote (a local folder); MLflow is a tracking server both reach."""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.tools import lock_entries
from pipeline.tools.server_process import free_port, stop_group
from scripts.mlflow_server import mlflow_server
from tests.conftest import TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

pytestmark = pytest.mark.slow
VARIANTS = {"tinyA": TINY_SPEC, "tinyB": {**TINY_SPEC, "latent_dim": 4}}
EXPERIMENT = "two-nodes"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The head's project (prepare already run there and committed), the node's clone, the remote, a server."""
    base = tmp_path_factory.mktemp("cluster")
    data = make_emnist_dir(base / "emnist")
    head, env = make_project(base / "head", VARIANTS, epochs=1, data_source=str(data))
    run(["dvc", "remote", "add", "-d", "shared", str(base / "remote")], head, env)
    run(["git", "commit", "-qam", "a DVC remote every node reaches"], head, env)
    node = base / "node"
    run(["git", "clone", "-q", str(head), str(node)], base, env)
    run(["dvc", "repro", "prepare"], head, env)  # its output reaches the node only through the remote
    prepared = yaml.safe_load((head / "dvc.lock").read_text())["stages"]["prepare"]
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 bytes
    token = secrets.token_hex(32)  # the cluster's own: `ray start` creates none, and ~/.ray may hold none
    env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    port, groups = free_port(), []
    try:
        with mlflow_server(f"sqlite:///{base / 'mlflow.db'}", artifacts=base / "artifacts") as url:
            head_args = ["--head", "--num-cpus", "0", "--port", str(port), "--temp-dir", str(ray_dir)]
            groups.append(start_node([*head_args, "--include-dashboard", "false"], env))
            node_env = {**env, "COMPRESSNET_CHECKOUT": str(node)}
            groups.append(start_node(["--address", f"127.0.0.1:{port}", "--num-cpus", "2"], node_env))
            env = {**env, "MLFLOW_TRACKING_URI": url}
            cmd = [sys.executable, "-m", "pipeline.tools.parallel", "--address", f"127.0.0.1:{port}"]
            cmd += ["--remote", "shared"]
            output = run(cmd, head, env, timeout=1800)
            yield {
                "head": head,
                "node": node,
                "env": env,
                "url": url,
                "cmd": cmd,
                "output": output,
                "prepared": prepared,
            }
    finally:
        for group in reversed(groups):
            stop_group(group)
        shutil.rmtree(ray_dir, ignore_errors=True)


def start_node(args: list[str], env: dict) -> int:
    """`ray start` returns once its node runs, leaving the node's processes in the process group it led."""
    ray = str(Path(sys.executable).parent / "ray")
    process = subprocess.Popen(
        [ray, "start", *args, "--disable-usage-stats"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = process.communicate()[0]
    assert process.returncode == 0, output
    return process.pid


def lock(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def test_the_head_is_up_to_date_as_after_a_sequential_repro(cluster):
    head, env = cluster["head"], cluster["env"]
    assert json.loads(run(["dvc", "status", "--json"], head, env)) == {}
    output = run(["dvc", "repro"], head, env)
    assert "Running stage" not in output and "Data and pipelines are up to date." in output


def test_every_stage_ran_on_the_node_and_came_back_through_the_remote(cluster):
    head, node = cluster["head"], cluster["node"]
    ran_on_node = lock(node)
    assert lock(head)["prepare"] == cluster["prepared"]  # not rerun: the node pulled its output
    for name, entry in lock(head).items():
        if name != "prepare":
            assert ran_on_node[name] == entry, name
            assert (node / "logs" / f"{name}.log").is_file() and not (head / "logs" / f"{name}.log").exists()
    for run_name in ("tinyA-seed0", "tinyB-seed0"):
        model = Path("models") / f"{run_name}.pt"
        assert (head / model).read_bytes() == (node / model).read_bytes()
        metrics = Path("reports") / "metrics" / f"{run_name}.json"  # not cached by DVC: it came with the task
        assert (head / metrics).read_bytes() == (node / metrics).read_bytes()
    in_remote = run(["dvc", "status", "--cloud", "--remote", "shared", "--json"], head, cluster["env"])
    assert json.loads(in_remote) == {}  # every cached output of every stage is on the remote


def test_every_stage_logged_a_finished_run_on_the_shared_server(cluster):
    client = MlflowClient(tracking_uri=cluster["url"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    stages = {r.data.tags["stage"]: r.info.status for r in runs}
    assert stages == {
        "classifier": "FINISHED",
        "train@tinyA-0": "FINISHED",
        "train@tinyB-0": "FINISHED",
        "report": "FINISHED",
    }
    trained = [r for r in runs if r.data.tags["stage"].startswith("train@")]
    assert all(r.data.tags.get("evaluated") == "true" and "test_mse" in r.data.metrics for r in trained)  # evaluate's
    assert not (cluster["head"] / "mlflow.db").exists() and not (cluster["node"] / "mlflow.db").exists()


def test_a_sqlite_store_is_refused_for_a_cluster(tmp_path):
    (tmp_path / "p").mkdir()
    root, env = make_project(tmp_path / "p", VARIANTS, epochs=1)
    cmd = [sys.executable, "-m", "pipeline.tools.parallel", "--address", "127.0.0.1:1", "--remote", "shared"]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "tracking server" in result.stderr
    assert os.path.exists(root / "dvc.yaml") and not (root / "mlflow.db").exists()


def test_adopting_a_stage_that_differs_here_puts_the_previous_one_back(cluster, monkeypatch):
    """A node's entry whose code hash is not this checkout's: adopt refuses it and leaves the stage as it was."""
    head = cluster["head"]
    monkeypatch.chdir(head)  # as the executor runs: DVC finds a target's dvc.yaml from the working directory
    before, report = lock(head)["report"], head / "reports" / "report.md"
    written = report.read_bytes()
    entry = copy.deepcopy(before)
    next(dep for dep in entry["deps"] if dep["path"] == "pipeline/stages/report.py")["md5"] = "0" * 32
    node_files = {"reports/report.md": b"another node's report\n"}
    with pytest.raises(lock_entries.CheckoutDiffers, match="pipeline/stages/report.py modified"):
        lock_entries.adopt(head, "report", entry, node_files, "shared")
    assert lock(head)["report"] == before and report.read_bytes() == written
    assert json.loads(run(["dvc", "status", "--json"], head, cluster["env"])) == {}


def test_a_node_whose_code_differs_refuses_the_stage_before_running_it(cluster):
    head, node, env = cluster["head"], cluster["node"], cluster["env"]
    stage_code = node / "pipeline" / "stages" / "report.py"
    original = stage_code.read_text()
    stage_code.write_text(original + "\n# another commit's code\n")
    (head / "reports" / "report.md").unlink()  # report is out of date, and would run on the node
    before, node_report = lock(head)["report"], (node / "reports" / "report.md").read_bytes()
    try:
        result = subprocess.run(cluster["cmd"], cwd=head, env=env, capture_output=True, text=True)
    finally:
        stage_code.write_text(original)
    assert result.returncode == 1
    assert "stage report failed (exit 2)" in result.stderr
    assert "its checkout differs from the executor's in pipeline/stages/report.py;" in result.stderr
    assert lock(head)["report"] == before and not (head / "reports" / "report.md").exists()  # as it was
    assert (node / "reports" / "report.md").read_bytes() == node_report  # the node never ran it
