"""What the evaluate and report tests share: a project with prepared data, two tiny variants trained with MLflow
tracking, the classifier and the baselines, made once per test session (fixture `trained`: no test changes it); a
private copy of it per test, which also puts mlflow's process-wide tracking URI back afterwards (`workspace`; both
registered in conftest.py); and running evaluate in it, its store's client and a run's model file."""

from __future__ import annotations

import shutil
from collections import OrderedDict
from pathlib import Path

import mlflow.tracking._tracking_service.utils as mlflow_uri
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import paths, tracking
from pipeline.lib.config import parse_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.stages import baselines as baselines_stage
from pipeline.stages import classifier as classifier_stage
from pipeline.stages import evaluate as evaluate_stage
from pipeline.stages import train as train_stage
from tests.conftest import TINY_SPEC, repoint_artifacts
from tests.fakedata import make_emnist_dir

RAW_PARAMS = {
    "train": {"epochs": 1, "batch_size": 64, "threads": 1},
    "classifier": {"epochs": 5, "batch_size": 32},  # enough to classify the fake glyphs
    "rate_distortion": {"jpeg_qualities": [5], "webp_qualities": [5], "pca_dims": [4]},  # the report needs a few
    "mlflow": {"log_model": False},
    "variants": {"tinyA": TINY_SPEC, "tinyB": {**TINY_SPEC, "latent_dim": 4, "rate_weight": 0.01}},
}
LAYOUT = ("data", "models", "reports")  # what the session's project holds besides its store


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """A project with prepared data, two tiny variants trained with MLflow tracking, the classifier and the
    baselines, made once for the session by the stage functions (the store: <base>/mlruns/mlflow.db); tests work
    in copies of it (`workspace`)."""
    base = tmp_path_factory.mktemp("trained")
    root, store = base / "project", base / "mlruns"
    root.mkdir(), store.mkdir()
    emnist = make_emnist_dir(base / "emnist")
    raw = {"data": {"source": str(emnist)}, **RAW_PARAMS}
    params = parse_params(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPRESSNET_ROOT", str(root))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        patch.setattr(mlflow_uri, "_tracking_uri", None)
        prepare_from_directory(params.data, emnist, paths.prepared_dir())
        tracker = tracking.MlflowTracker()
        for variant in params.variants:
            train_stage.train(params, variant, 0, tracker)
        classifier_stage.train_classifier(params, tracker)
        baselines_stage.write_baselines(params)
    return {"root": root, "store": store, "params": params, "raw": raw}


@pytest.fixture
def workspace(trained, project_root: Path, tmp_path: Path, monkeypatch) -> dict:
    """A private copy of the session's project (tests may delete or rewrite files) and of its tracking store."""
    monkeypatch.setattr(mlflow_uri, "_tracking_uri", None)  # MlflowTracker sets it process-wide: put it back after
    # every copy has the same run ids, and MLflow caches each run's artifact directory by its id, process-wide
    monkeypatch.setattr(mlflow_uri, "_artifact_repos_cache", OrderedDict())
    for name in LAYOUT:
        shutil.copytree(trained["root"] / name, project_root / name)
    (project_root / "params.yaml").write_text(yaml.safe_dump(trained["raw"], sort_keys=False))
    store = Path(shutil.copytree(trained["store"], tmp_path / "mlruns"))
    repoint_artifacts(store / "mlflow.db", trained["store"], store)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_ROOT", raising=False)  # not run by DVC: provenance is "unknown"
    return {"params": trained["params"], "root": project_root, "uri": uri}


def run_evaluate(ws: dict, variant: str, tracker=None) -> dict:
    return evaluate_stage.evaluate(ws["params"], variant, 0, tracker or tracking.NoOpTracker())


def client(ws: dict) -> MlflowClient:
    return MlflowClient(tracking_uri=ws["uri"])


def model_path(variant: str = "tinyA") -> Path:
    return paths.model_file(f"{variant}-seed0")
