"""Interruptions, crashes, concurrency and tracking faults, each against real stage processes
(`python -m pipeline.stages.<stage>`, or `python -c` wrapping a stage's main) in a tmp project root.

Interruptions happen at a known point, never after a sleep: the wrapped process signals itself once epoch 1's
checkpoint is written. Every process uses the project root's own sqlite store (COMPRESSNET_ROOT/mlflow.db).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline import paths
from pipeline.lib.classifier import build_classifier
from pipeline.lib.config import load_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.io import save_torch
from pipeline.lib.prepared import load_mapping
from pipeline.tracking import DEFAULT_EXPERIMENT
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir

pytestmark = pytest.mark.slow
VARIANTS = {"tiny1": TINY_SPEC, "tiny2": {**TINY_SPEC, "latent_dim": 4}}
EPOCHS = 3
HANG_GUARD = 600  # seconds: only stops a hung process, never part of what a test checks
# a stage's main with Trainer.fit wrapped: after epoch 1 is logged and checkpointed, the process sends itself `sig`
SIGNAL_AFTER_EPOCH_1 = """
import os, signal, sys
from pipeline.lib import training
from pipeline.stages import train

fit = training.Trainer.fit

def fit_then_signal(self, train_x, val_x, on_epoch):
    def on_epoch_then_signal(row):
        on_epoch(row)  # logs the epoch and writes the checkpoint
        if row["epoch"] == 1:
            os.kill(os.getpid(), signal.{sig})
    fit(self, train_x, val_x, on_epoch_then_signal)

training.Trainer.fit = fit_then_signal
sys.exit(train.main(sys.argv[1:]))
"""
CRASH_IN_EPOCH_1 = """
import sys
from pipeline.lib import training
from pipeline.stages import train

def train_epoch(self, train_x, epoch):
    raise RuntimeError("disk on fire")

training.Trainer.train_epoch = train_epoch
sys.exit(train.main(sys.argv[1:]))
"""
# evaluate interrupted (Ctrl-C) while it logs into the training run: after its metrics and tags, at the image
INTERRUPT_EVALUATE_LOGGING = """
import sys
from pipeline import tracking
from pipeline.stages import evaluate

def log_image(self, image, name):
    raise KeyboardInterrupt

tracking.MlflowRun.log_image = log_image
sys.exit(evaluate.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A project root as after the prepare and classifier stages: params.yaml, data/prepared, models/classifier.pt
    (an untrained classifier: evaluate only needs the file) and an empty mlflow.db."""
    root = tmp_path_factory.mktemp("template")
    emnist = make_emnist_dir(root / "emnist")
    raw = {
        "data": {"source": str(emnist)},
        "seeds": [0],
        "train": {"epochs": EPOCHS, "batch_size": 64, "threads": 1, "device": "cpu"},
        "mlflow": {"log_model": False},
        "variants": VARIANTS,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(root / "params.yaml")
    prepared = root / "data" / "prepared"
    prepare_from_directory(params.data, emnist, prepared)
    n_classes = len(load_mapping(prepared))
    save_torch(
        {"n_classes": n_classes, "state_dict": build_classifier(n_classes).state_dict(), "test_accuracy": 0.0},
        root / "models" / "classifier.pt",
    )
    # the project's sqlite store with its tables created (MLflow's schema migration takes seconds, and two
    # processes that both find no database both migrate it, and fail)
    client(root).search_experiments()
    return root


@pytest.fixture
def project(template, tmp_path) -> tuple[Path, dict]:
    """A fresh copy of the template root, and the environment that points every stage process at it."""
    root = tmp_path / "project"
    shutil.copytree(template, root)
    env = {**os.environ, "COMPRESSNET_ROOT": str(root), "PYTHONPATH": str(paths.REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_RUN_ID",
        "DVC_ROOT",
        "DVC_EXP_NAME",
        "DVC_EXP_BASELINE_REV",
    ):
        env.pop(name, None)
    return root, env


def start(root: Path, env: dict, code: str | None, stage: str, *argv: str) -> subprocess.Popen:
    """`python -m pipeline.stages.<stage> argv`, or `python -c code argv` (code runs the stage's main)."""
    head = ["-m", f"pipeline.stages.{stage}"] if code is None else ["-c", code]
    return subprocess.Popen(
        [sys.executable, *head, *argv], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=HANG_GUARD)
    return process.returncode, out, err


def train(root: Path, env: dict, variant: str, code: str | None = None) -> tuple[int, str, str]:
    return finish(start(root, env, code, "train", variant, "--seed", "0"))


def must_train(root: Path, env: dict, variant: str) -> str:
    code, out, err = train(root, env, variant)
    assert code == 0, f"{out[-3000:]}\n{err[-3000:]}"
    return out


def weights(root: Path, variant: str) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / f"{variant}-seed0.pt", weights_only=False)["state_dict"]


def checkpoint(root: Path, variant: str) -> Path:
    return root / "checkpoints" / f"{variant}-seed0.ckpt"


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def runs_by_name(root: Path) -> dict:
    experiment = client(root).get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = sorted(client(root).search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)
    return {r.info.run_name: r for r in runs}  # the newest run of each name


def test_sigkill_after_epoch_1_then_rerun_gives_the_uninterrupted_weights(project):
    root, env = project
    must_train(root, env, "tiny1")
    reference = weights(root, "tiny1")
    (root / "models" / "tiny1-seed0.pt").unlink()

    code, out, err = train(root, env, "tiny1", SIGNAL_AFTER_EPOCH_1.format(sig="SIGKILL"))
    assert code == -signal.SIGKILL, f"{out[-3000:]}\n{err[-3000:]}"
    ckpt = torch.load(checkpoint(root, "tiny1"), weights_only=False)
    assert len(ckpt["trainer"]["history"]) == 1
    assert not (root / "models" / "tiny1-seed0.pt").exists()
    # a SIGKILL cannot be caught: the run stays RUNNING, and the rerun continues it
    assert client(root).get_run(ckpt["run_id"]).info.status == "RUNNING"

    resumed = must_train(root, env, "tiny1")
    assert "resuming tiny1-seed0 after epoch 1" in resumed
    final = weights(root, "tiny1")
    assert reference.keys() == final.keys() and all(torch.equal(reference[k], final[k]) for k in reference)
    assert not checkpoint(root, "tiny1").exists()
    run = client(root).get_run(ckpt["run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client(root).get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]


def test_sigterm_marks_the_run_killed_and_the_rerun_finishes_it(project):
    root, env = project
    code, out, err = train(root, env, "tiny2", SIGNAL_AFTER_EPOCH_1.format(sig="SIGTERM"))
    assert code == 128 + signal.SIGTERM and "train: interrupted by SIGTERM; its finished epochs are in" in err, err
    assert "Traceback" not in err
    assert "epoch 2/" not in out + err  # stopped right after epoch 1
    ckpt = torch.load(checkpoint(root, "tiny2"), weights_only=False)
    assert len(ckpt["trainer"]["history"]) == 1
    assert not (root / "models" / "tiny2-seed0.pt").exists()
    assert client(root).get_run(ckpt["run_id"]).info.status == "KILLED"

    assert "resuming tiny2-seed0 after epoch 1" in must_train(root, env, "tiny2")
    assert client(root).get_run(ckpt["run_id"]).info.status == "FINISHED"
    assert torch.load(root / "models" / "tiny2-seed0.pt", weights_only=False)["mlflow_run_id"] == ckpt["run_id"]


def test_crash_marks_the_run_failed(project):
    root, env = project
    code, out, err = train(root, env, "tiny2", CRASH_IN_EPOCH_1)
    assert code != 0 and "disk on fire" in err, f"{out[-3000:]}\n{err[-3000:]}"
    assert runs_by_name(root)["tiny2-seed0"].info.status == "FAILED"
    assert not (root / "models" / "tiny2-seed0.pt").exists()


def test_tracking_server_down_fails_before_training(project):
    root, env = project
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    code, out, err = train(root, {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, "tiny1")
    assert code == 1, f"{out[-3000:]}\n{err[-3000:]}"
    assert f"train: error: MLflow tracking server http://127.0.0.1:{port} is not reachable" in err
    assert "epoch 1/" not in out + err
    assert not (root / "checkpoints").exists() and not (root / "models" / "tiny1-seed0.pt").exists()
    assert client(root).get_experiment_by_name(DEFAULT_EXPERIMENT) is None  # no fallback to the local store


def test_two_variants_trained_at_once_share_the_sqlite_store(project):
    root, env = project
    processes = [start(root, env, None, "train", variant, "--seed", "0") for variant in VARIANTS]
    results = [finish(process) for process in processes]
    assert [code for code, _, _ in results] == [0, 0], [err[-1500:] for _, _, err in results]
    runs = runs_by_name(root)
    assert {runs[f"{variant}-seed0"].info.experiment_id for variant in VARIANTS} == {
        client(root).get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id
    }
    for variant in VARIANTS:
        latest = runs[f"{variant}-seed0"]
        assert latest.info.status == "FINISHED"
        assert [m.step for m in client(root).get_metric_history(latest.info.run_id, "val_loss")] == [1, 2, 3]
        saved = torch.load(root / "models" / f"{variant}-seed0.pt", weights_only=False)
        assert saved["mlflow_run_id"] == latest.info.run_id


def test_evaluate_cannot_change_the_finished_training_run(project):
    root, env = project
    must_train(root, env, "tiny1")
    trained = runs_by_name(root)["tiny1-seed0"]
    assert trained.info.status == "FINISHED"

    # evaluate fails before it measures anything: no classifier
    classifier = root / "models" / "classifier.pt"
    classifier.rename(classifier.with_suffix(".away"))
    code, out, err = finish(start(root, env, None, "evaluate", "tiny1", "--seed", "0"))
    assert code == 1 and "evaluate: error: " in err and "classifier.pt: missing" in err, f"{out}\n{err}"
    classifier.with_suffix(".away").rename(classifier)

    # evaluate interrupted while it logs into the training run
    code, out, err = finish(start(root, env, INTERRUPT_EVALUATE_LOGGING, "evaluate", "tiny1", "--seed", "0"))
    assert code == 130 and "evaluate: interrupted by SIGINT\n" in err and "Traceback" not in err, err[-3000:]
    after = client(root).get_run(trained.info.run_id)
    assert after.data.tags.get("evaluated") == "true" and "test_mse" in after.data.metrics  # it did log there
    assert (after.info.status, after.info.end_time) == ("FINISHED", trained.info.end_time)
    assert (root / "reports" / "metrics" / "tiny1-seed0.json").exists()  # its outputs come before the logging
    assert set(runs_by_name(root)) == {"tiny1-seed0"}  # and no run of its own
