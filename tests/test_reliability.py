"""Interruptions, concurrency and tracking faults, each against real subprocesses in a copy of the repo."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

pytestmark = pytest.mark.slow
VARIANTS = {"tiny1": TINY_SPEC, "tiny2": {**TINY_SPEC, "latent_dim": 4}}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """A repo copy with prepared data large enough that an epoch takes a noticeable moment."""
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist", n_train=3000)
    root, env = make_project(tmp_path_factory.mktemp("project"), VARIANTS, epochs=3, data_source=str(data_dir))
    env = {**env, "PYTHONUNBUFFERED": "1"}
    run(["dvc", "repro", "prepare"], root, env)
    return root, env


def train_command(variant: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", variant]


def weights(root: Path, variant: str) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / f"{variant}-seed0.pt", weights_only=False)["state_dict"]


def runs_by_name(root: Path) -> dict:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("compressnet")
    runs = sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)
    return {r.info.run_name: r for r in runs}  # the newest run of each name


def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_weights(project):
    root, env = project
    run(train_command("tiny1"), root, env)
    reference = weights(root, "tiny1")
    (root / "models" / "tiny1-seed0.pt").unlink()
    process = subprocess.Popen(train_command("tiny1"), cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = root / "checkpoints" / "tiny1-seed0.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert checkpoint.exists() and not (root / "models" / "tiny1-seed0.pt").exists()
    completed = len(torch.load(checkpoint, weights_only=False)["trainer"]["history"])
    assert 1 <= completed < 3
    resumed = run(train_command("tiny1"), root, env)
    assert f"resuming tiny1-seed0 after epoch {completed}" in resumed
    final = weights(root, "tiny1")
    assert all(torch.equal(reference[k], final[k]) for k in reference)
    assert not checkpoint.exists()
    assert runs_by_name(root)["tiny1-seed0"].info.status == "FINISHED"


def test_two_variants_trained_at_once_share_the_sqlite_store(project):
    root, env = project
    processes = [subprocess.Popen(train_command(v), cwd=root, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for v in VARIANTS]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    runs = runs_by_name(root)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    for variant in VARIANTS:
        latest = runs[f"{variant}-seed0"]
        assert latest.info.status == "FINISHED"
        history = client.get_metric_history(latest.info.run_id, "val_loss")
        assert [m.step for m in history] == [1, 2, 3]


def test_sigterm_marks_the_run_killed_not_running(project):
    root, env = project
    process = subprocess.Popen(train_command("tiny2"), cwd=root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    checkpoint = root / "checkpoints" / "tiny2-seed0.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode != 0, output
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run_id = torch.load(checkpoint, weights_only=False)["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    checkpoint.unlink()


def test_tracking_server_down_fails_fast_before_training(project):
    root, env = project
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    started = time.monotonic()
    result = subprocess.run(train_command("tiny1"), cwd=root, capture_output=True, text=True, timeout=120,
                            env={**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert result.returncode == 1
    assert f"http://127.0.0.1:{port} is not reachable" in result.stderr
    assert "epoch 1/" not in result.stdout + result.stderr
    assert time.monotonic() - started < 60


def test_crash_marks_the_run_failed(project):
    root, env = project
    crash = ("import sys, pipeline.train as t; "
             "t.Trainer.train_epoch = lambda *a: (_ for _ in ()).throw(RuntimeError('disk on fire')); "
             "sys.exit(t.main(['tiny2']))")
    result = subprocess.run([sys.executable, "-c", crash], cwd=root, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "disk on fire" in result.stderr
    latest = runs_by_name(root)["tiny2-seed0"]
    assert latest.info.status == "FAILED"
