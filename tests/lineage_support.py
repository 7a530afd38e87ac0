"""What the lineage tests share: the tiny run's names, a hand-made dvc.lock as `dvc repro` writes it, the run's
model and MLflow run, what a clean chain prints, the fixtures (registered in conftest.py) `built`, a project whose
stages ran in-process, and `copy`, a private copy of it, and `isolated_store`, which points lineage at the checked
project's own store and puts mlflow's process-wide tracking URI back afterwards."""

from __future__ import annotations

import dataclasses
import shutil
from collections import OrderedDict
from pathlib import Path

import mlflow.tracking._tracking_service.utils as mlflow_uri
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline import paths, tracking
from pipeline.lib import prepared
from pipeline.lib.config import load_params, parse_params
from pipeline.lib.io import md5_file, sha256_file
from pipeline.stages.classifier import train_classifier
from pipeline.stages.evaluate import evaluate
from pipeline.stages.prepare import prepare
from pipeline.stages.train import train
from tests.conftest import REPO, TINY_SPEC, repoint_artifacts
from tests.fakedata import make_emnist_dir

VARIANT, RUN, MODEL = "tiny", "tiny-seed0", "models/tiny-seed0.pt"
TRAIN, EVALUATE = "train@tiny-0", "evaluate@tiny-0"


@pytest.fixture
def isolated_store(monkeypatch) -> None:
    """Lineage reads the store of the project it checks (<root>/mlflow.db), as in a user's checkout; MlflowTracker
    points mlflow's process-wide tracking URI at a store: put it back afterwards."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setattr(mlflow_uri, "_tracking_uri", None)
    # the project's copies have the same run ids, and MLflow caches each run's artifact directory by its id
    monkeypatch.setattr(mlflow_uri, "_artifact_repos_cache", OrderedDict())


def lookup(tree: dict, dotted: str) -> object:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def hand_made_lock(root: Path) -> dict:
    """The dvc.lock entries lineage reads, as `dvc repro` writes them: each stage's params (the keys dvc.yaml lists,
    valued from params.yaml) and the md5 of its outputs. (test_hand_made_lock_has_the_shape_of_dvcs checks it.)"""
    current = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

    def entry(stage: str, outs: list[str]) -> dict:
        keys = [key.replace("${item.variant}", VARIANT) for key in stages[stage]["params"]]
        return {
            "params": {"params.yaml": {key: lookup(current, key) for key in keys}},
            "outs": [
                {
                    "path": out,
                    "hash": "md5",
                    "md5": md5_file(root / out)
                    if (root / out).is_file()
                    else md5_file(root / out / "manifest.json") + ".dir",
                }
                for out in outs
            ],
        }

    return {
        "prepare": entry("prepare", ["data/prepared"]),
        TRAIN: entry("train", [MODEL, "models/tiny-seed0.best.pt"]),
        EVALUATE: entry("evaluate", [f"reports/samples/{RUN}.npy"]),
    }


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def saved_model(root: Path) -> dict:
    return torch.load(root / MODEL, map_location="cpu", weights_only=False)


def assert_clean_chain(root: Path, out: str) -> None:
    saved = saved_model(root)
    manifest = prepared.load_manifest(root / "data" / "prepared")
    tags = client(root).get_run(saved["mlflow_run_id"]).data.tags
    for link in [
        *manifest["inputs"].values(),
        saved["data_manifest_sha256"],
        f"git commit {tags['git_commit']}",
        f"MLflow run {saved['mlflow_run_id']} (FINISHED)",
        "latent_dim=8",
        sha256_file(root / MODEL),
        md5_file(root / MODEL),
        f"reports/metrics/{RUN}.json: mse 0.",
    ]:
        assert link in out
    assert out.endswith("lineage: every link matches\n")


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """A project whose stages ran in-process, tracked in <root>/mlflow.db, with a hand-made dvc.lock; made once per
    session: a test that changes it works in a copy (`copy`)."""
    base = tmp_path_factory.mktemp("lineage")
    root = base / "project"
    root.mkdir()
    raw = {
        "data": {"source": str(make_emnist_dir(base / "emnist"))},
        "train": {"epochs": 1, "batch_size": 64, "threads": 1},
        "classifier": {"epochs": 1},
        "mlflow": {"log_model": False},
        "variants": {VARIANT: TINY_SPEC},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(dataclasses.asdict(parse_params(raw)), sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPRESSNET_ROOT", str(root))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("DVC_ROOT", raising=False)
        patch.setattr(mlflow_uri, "_tracking_uri", None)
        params = load_params(paths.params_file())
        prepare(params)
        tracker = tracking.MlflowTracker()
        train(params, VARIANT, 0, tracker)
        train_classifier(params, tracker)
        evaluate(params, VARIANT, 0, tracker)
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": hand_made_lock(root)}, sort_keys=False))
    return root


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A private copy of the in-process project, store included, for a test to break."""
    copied = Path(shutil.copytree(built, tmp_path / "project", symlinks=True))
    repoint_artifacts(copied / "mlflow.db", built, copied)
    return copied
