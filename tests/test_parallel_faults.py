"""The Ray executor under faults: a Ray worker SIGKILLed in the middle of a training stage (retried once, then the
run stops naming the stage), and Ctrl-C or SIGTERM in the middle of one (every stage stopped). Each leaves dvc.lock
with only finished stages, no MLflow run RUNNING, and a next run that finishes only what is left.

A hook on PYTHONPATH (sitecustomize) acts inside train@tinyA-0's process when it renames its first checkpoint into
place: at a known point of the work, never after a sleep. With FAULT=ctrl-c-at-start the executor instead gets SIGINT
as it calls ray.init.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

pytestmark = pytest.mark.slow
VARIANTS = {"tinyA": TINY_SPEC, "tinyB": {**TINY_SPEC, "latent_dim": 4}}
TARGET = "train@tinyA-0"
HOOK = """
import os, signal, sys
if os.environ.get("FAULT") == "ctrl-c-at-start" and "pipeline.tools.parallel" in sys.orig_argv:
    import ray
    _init = ray.init

    def init(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return _init(*args, **kwargs)

    ray.init = init
if os.environ.get("FAULT"):  # in every process: a forked stage (warm_stages.py) starts from the forkserver's
    from pathlib import Path
    _replace, _marker = os.replace, Path(os.environ["FAULT_MARKER"])

    def in_the_target():  # sys.argv as `python -m pipeline.stages.train tinyA --seed 0` has it, forked or not
        return sys.argv[0].endswith("pipeline/stages/train.py") and sys.argv[1:] == ["tinyA", "--seed", "0"]

    def parent(pid):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    def cmdline(pid):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\\0", b" ").decode()
        except OSError:  # gone meanwhile
            return ""

    def here(pid):  # this test's project: other tests' executors run beside it
        try:
            return os.readlink(f"/proc/{pid}/cwd") == os.getcwd()
        except OSError:
            return False

    def strike():
        if os.environ["FAULT"] == "kill-worker":
            worker = os.getppid()  # setpriv exec'd a fresh stage: its parent is the Ray worker
            if "multiprocessing.forkserver" in cmdline(worker):
                worker = parent(worker)  # a forked stage's parent is the forkserver the Ray worker started
            assert "ray" in cmdline(worker), cmdline(worker)
            os.kill(worker, signal.SIGKILL)
        else:  # ctrl-c (SIGINT, as a terminal sends it) or sigterm to the executor, then wait to be stopped
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            driver = next(p for p in pids if "pipeline.tools.parallel" in cmdline(p) and here(p))
            os.kill(int(driver), signal.SIGTERM if os.environ["FAULT"] == "sigterm" else signal.SIGINT)
        signal.pause()  # the executor or the kernel ends this process

    def replace(src, dst, *args, **kwargs):
        again = os.environ.get("FAULT_EVERY_TIME") or not _marker.exists()
        if "checkpoints" in str(dst) and in_the_target() and again:
            _marker.touch()
            strike()
        return _replace(src, dst, *args, **kwargs)

    os.replace = replace
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")


def project(tmp_path: Path, data: Path, fault: str, every_time: bool = False) -> tuple[Path, dict]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    root, env = make_project(tmp_path / "project", VARIANTS, epochs=1, data_source=str(data))
    env = {**env, "PYTHONPATH": str(hook), "FAULT": fault, "FAULT_MARKER": str(tmp_path / "struck")}
    return root, {**env, "FAULT_EVERY_TIME": "1"} if every_time else env


def executor(root: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.tools.parallel", "--jobs", "2"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def mlflow_runs(root: Path, stage: str | None = None) -> list[str]:
    """The statuses of the MLflow runs of one stage (all stages: None), oldest first."""
    with sqlite3.connect(root / "mlflow.db") as db:
        query = "select tags.value, runs.status from runs join tags on tags.run_uuid = runs.run_uuid"
        rows = db.execute(query + " where tags.key = 'stage' order by runs.start_time").fetchall()
    return [status for name, status in rows if stage is None or name == stage]


def locked(root: Path) -> set[str]:
    import yaml

    lock = root / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()


def stage_processes(root: Path) -> list[str]:
    """The live stage processes working in this project (other tests' run beside it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            live = Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
            if "pipeline.stages." in line and live and os.readlink(f"/proc/{pid}/cwd") == str(root):
                found.append(line)
        except OSError:  # gone meanwhile
            continue
    return found


def test_a_killed_worker_is_retried_once_and_the_run_resumes(tmp_path, data):
    root, env = project(tmp_path, data, "kill-worker")
    result = executor(root, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"stage {TARGET} was killed (signal 9); 1 MLflow run(s) marked KILLED; retrying it once" in result.stderr
    assert (tmp_path / "struck").exists()
    # killed before its first checkpoint was in place: the retry starts a run of its own
    assert mlflow_runs(root, TARGET) == ["KILLED", "FINISHED"]
    assert mlflow_runs(root).count("FINISHED") == len(mlflow_runs(root)) - 1
    assert json.loads(run(["dvc", "status", "--json"], root, env)) == {}
    model = torch.load(root / "models" / "tinyA-seed0.pt", weights_only=True)
    assert model["state_dict"]  # written whole by the retry


def test_a_stage_killed_twice_stops_the_run_and_is_named(tmp_path, data):
    root, env = project(tmp_path, data, "kill-worker", every_time=True)
    result = executor(root, env)
    assert result.returncode == 1
    assert f"stage {TARGET} was killed (signal 9); 1 MLflow run(s) marked KILLED, for the second time" in result.stderr
    assert mlflow_runs(root, TARGET) == ["KILLED", "KILLED"]
    assert TARGET not in locked(root) and "prepare" in locked(root)
    assert not (root / "models" / "tinyA-seed0.pt").exists()
    assert stage_processes(root) == []


@pytest.mark.parametrize("fault, signal_name, code", [("ctrl-c", "SIGINT", 130), ("sigterm", "SIGTERM", 143)])
def test_ctrl_c_stops_every_stage_and_the_next_run_finishes_the_rest(tmp_path, data, fault, signal_name, code):
    root, env = project(tmp_path, data, fault)
    result = executor(root, env)
    assert result.returncode == code, result.stderr[-3000:]
    command = shlex.join([sys.executable, "-m", "pipeline.tools.parallel", "--jobs", "2"])  # its python: not in root
    go_on = f"`{command}` runs the rest"
    assert f"parallel: interrupted by {signal_name}; finished stages are committed, {go_on}" in result.stderr
    assert stage_processes(root) == []
    assert "RUNNING" not in mlflow_runs(root)
    assert mlflow_runs(root, TARGET) == ["KILLED"]
    assert TARGET not in locked(root)
    status = json.loads(run(["dvc", "status", "--json"], root, env))
    assert TARGET in status and "prepare" not in status  # what finished stays committed

    again = executor(root, env)  # the marker is there: no fault this time
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(run(["dvc", "status", "--json"], root, env)) == {}
    assert mlflow_runs(root, TARGET) == ["KILLED", "FINISHED"]


def test_ctrl_c_as_ray_starts_stops_the_run_before_any_stage(tmp_path, data):
    root, env = project(tmp_path, data, "ctrl-c-at-start")
    result = executor(root, env)
    assert result.returncode == 130, result.stderr[-3000:]
    assert "interrupted by SIGINT" in result.stderr and "Traceback" not in result.stderr
    assert locked(root) == set() and mlflow_runs(root) == []
