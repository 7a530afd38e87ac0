"""What the lineage tests share: the tiny run's names, a hand-made dvc.lock as `dvc repro` writes it, the run's
model and MLflow run, what a clean chain prints, and the fixture `isolated_store` (registered in conftest.py), which
points lineage at the checked project's own store and puts mlflow's process-wide tracking URI back afterwards."""

from __future__ import annotations

from pathlib import Path

import mlflow.tracking._tracking_service.utils as mlflow_uri
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline.lib import prepared
from pipeline.lib.io import md5_file, sha256_file
from tests.conftest import REPO

VARIANT, RUN, MODEL = "tiny", "tiny-seed0", "models/tiny-seed0.pt"
TRAIN, EVALUATE = "train@tiny-0", "evaluate@tiny-0"


@pytest.fixture
def isolated_store(monkeypatch) -> None:
    """Lineage reads the store of the project it checks (<root>/mlflow.db), as in a user's checkout; MlflowTracker
    points mlflow's process-wide tracking URI at a store: put it back afterwards."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setattr(mlflow_uri, "_tracking_uri", None)


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
