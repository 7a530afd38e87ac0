"""What the training tests share: a tiny variant's params, the train stage and the library loop run in tmp
roots, throwaway MLflow stores, one 3-epoch baseline run per test module (fixtures, registered in conftest.py),
and spies on the epochs and batches a run trains."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import paths, tracking
from pipeline.lib.config import DataConfig, parse_params, run_name
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.trainer import Trainer
from pipeline.lib.training import RunFiles, train_run
from pipeline.stages import train as train_stage
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir

VARIANT = "tiny"
RUN = run_name(VARIANT, 0)  # file stem of VARIANT trained with seed 0
EXPERIMENT = "test-train"  # MLFLOW_EXPERIMENT_NAME of the tests' stores
TRAIN_EPOCH = Trainer.train_epoch  # the real one, whatever a test has patched in
CPU = torch.device("cpu")
# environment a test must not inherit: mlflow.set_experiment/set_tracking_uri write MLFLOW_EXPERIMENT_ID and
# MLFLOW_TRACKING_URI into os.environ, DVC sets the others for the stages it runs
ENVIRONMENT = (
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
    "DVC_ROOT",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_TRACKING_URI",
)


def make_params(epochs: int = 3, log_model: bool = False, **train):
    return parse_params(
        {
            "variants": {VARIANT: TINY_SPEC},
            "seeds": [0],
            "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "device": "cpu", "threads": 1, **train},
            "mlflow": {"log_model": log_model},
        }
    )


def train(params, seed: int = 0) -> Path:
    """The train stage in-process, under paths.root() (COMPRESSNET_ROOT), tracked in MLFLOW_TRACKING_URI."""
    message = train_stage.train(params, VARIANT, seed, tracking.MlflowTracker())
    final = paths.model_file(run_name(VARIANT, seed))
    assert message == f"wrote {final}"
    return final


def run_files(out: Path, run: str = RUN) -> RunFiles:
    return RunFiles(
        out / "models" / f"{run}.pt",
        out / "models" / f"{run}.best.pt",
        out / "history" / f"{run}.csv",
        out / "checkpoints" / f"{run}.ckpt",
    )


def train_untracked(params, prepared: Path, out: Path) -> Path:
    """The library's train_run with the no-op tracker, writing under `out`."""
    return train_run(params, VARIANT, 0, prepared, run_files(out), tracking.NoOpTracker(), {}, {})


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def spy_epochs(monkeypatch, stop_at: int | None = None) -> list[int]:
    """Record the epoch indices Trainer.train_epoch runs; raise KeyboardInterrupt on index `stop_at`."""
    seen: list[int] = []

    def train_epoch(self, train_x, epoch):
        if epoch == stop_at:
            raise KeyboardInterrupt
        seen.append(epoch)
        return TRAIN_EPOCH(self, train_x, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    return seen


def clean_environment(monkeypatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)  # and monkeypatch removes them again afterwards


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("data")
    emnist = make_emnist_dir(base / "emnist")
    prepare_from_directory(DataConfig(source=str(emnist)), emnist, base / "prepared")
    return base / "prepared"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite file with the schema already created (creating it takes seconds); tests copy it."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def use_store(directory: Path, empty_store: Path, monkeypatch) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, directory / "mlflow.db")
    uri = f"sqlite:///{directory}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    return uri


def forget_store() -> None:
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def store(tmp_path, empty_store, monkeypatch):
    """A fresh sqlite store in tmp_path/store, used through MLFLOW_TRACKING_URI; yields a client on it."""
    clean_environment(monkeypatch)
    uri = use_store(tmp_path / "store", empty_store, monkeypatch)
    yield MlflowClient(tracking_uri=uri)
    forget_store()  # then monkeypatch restores the environment


@pytest.fixture
def root(tmp_path, prepared, monkeypatch) -> Path:
    """A project root (COMPRESSNET_ROOT) holding the prepared data, as after the prepare stage."""
    root = tmp_path / "project"
    shutil.copytree(prepared, root / "data" / "prepared")
    monkeypatch.setenv("COMPRESSNET_ROOT", str(root))
    return root


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, prepared, empty_store) -> dict:
    """One uninterrupted 3-epoch run (seed 0) of the train stage in its own root and store, for read-only tests."""
    out = tmp_path_factory.mktemp("baseline")
    shutil.copytree(prepared, out / "data" / "prepared")
    with pytest.MonkeyPatch.context() as monkeypatch:
        clean_environment(monkeypatch)
        monkeypatch.setenv("COMPRESSNET_ROOT", str(out))
        uri = use_store(out / "store", empty_store, monkeypatch)
        try:
            final = train(make_params())
        finally:
            forget_store()
    saved = load(final)
    client = MlflowClient(tracking_uri=uri)
    return {
        "out": out,
        "final": final,
        "saved": saved,
        "client": client,
        "history": out / "reports" / "history" / f"{RUN}.csv",
        "run": client.get_run(saved["mlflow_run_id"]),
    }


def spy_batches(loss_fn, seen: list):
    def spy(prediction, target, *args, **kwargs):
        seen.append(len(target))
        return loss_fn(prediction, target, *args, **kwargs)

    return spy
