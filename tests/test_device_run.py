"""scripts/device_run.py: the train and evaluate stage functions run with MLflow switched off."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline import classifier, evaluate, tracking, train
from pipeline.config import REPO_ROOT, load_params
from pipeline.prepare import prepare
from scripts import device_run
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("device_run")
    raw = {"data": {"source": str(make_emnist_dir(root / "emnist"))}, "seeds": [0],
           "train": {"batch_size": 64, "threads": 1}, "classifier": {"epochs": 1, "batch_size": 32},
           "variants": {"tiny": TINY_SPEC}}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    params = load_params(params_file)
    prepare(params.data, root / "prepared")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'classifier-mlflow.db'}")
        classifier.train_classifier(params, root / "prepared", root / "classifier.pt", root / "classifier.json")
    return {"root": root, "args": ["--params", str(params_file), "--prepared", str(root / "prepared"),
                                   "--classifier", str(root / "classifier.pt")]}


def test_train_then_evaluate_without_mlflow(project, tmp_path: Path, monkeypatch):
    patched = [(module, name, getattr(module, name)) for module, name in
               [(tracking, "setup"), (tracking, "tracked_run"), (train, "_log_inputs"), (train, "_log_epoch"),
                (train, "_log_outputs"), (train, "_resumable_run"), (evaluate, "_log_to_mlflow")]]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "out"
    assert device_run.main(["train", "tiny", str(out), "--epochs", "2", *project["args"]]) == 0
    saved = torch.load(out / "models" / "tiny-seed0.pt", weights_only=False)
    assert saved["mlflow_run_id"] == device_run.NO_RUN
    assert saved["epochs"] == 2 and saved["train"]["steps_per_epoch"] is None
    assert len(pd.read_csv(out / "history" / "tiny-seed0.csv")) == 2
    assert json.loads((out / "train-tiny-seed0.json").read_text())["epochs"] == 2

    assert device_run.main(["evaluate", "tiny", str(out), "--refine-steps", "2", *project["args"]]) == 0
    metrics = json.loads((out / "reports" / "metrics" / "tiny-seed0.json").read_text())
    assert metrics["refine_steps"] == 2 and metrics["run"]["mlflow_run_id"] == device_run.NO_RUN
    assert math.isfinite(metrics["psnr"]) and 0 < metrics["bytes_per_image_uint8_range"]
    assert not (tmp_path / "mlflow.db").exists()  # nothing reached the tracking store
    assert all(getattr(module, name) is original for module, name, original in patched)  # MLflow is back on


def test_budget_picks_whole_epochs(project, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(device_run, "seconds_per_epoch", lambda *_: 10.0)
    device_run.main(["train", "tiny", str(tmp_path / "a"), "--budget-s", "100", *project["args"]])
    assert "-> 7 epochs in" in capsys.readouterr().out  # 100 s / (10 s x 1.3 margin)
    assert torch.load(tmp_path / "a" / "models" / "tiny-seed0.pt", weights_only=False)["epochs"] == 7
    monkeypatch.setattr(device_run, "MAX_EPOCHS", 3)
    device_run.main(["train", "tiny", str(tmp_path / "b"), "--budget-s", "1e9", *project["args"]])
    assert "-> 3 epochs in" in capsys.readouterr().out  # a huge budget is capped


def test_variant_own_epochs_is_an_error(project, tmp_path: Path, capsys):
    raw = yaml.safe_load(Path(project["args"][1]).read_text())
    raw["variants"]["tiny"]["train"] = {"epochs": 5}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    args = ["train", "tiny", str(tmp_path), "--epochs", "1", *project["args"]]
    args[args.index("--params") + 1] = str(params_file)
    assert device_run.main(args) == 2
    assert "variants.tiny.train sets its own epochs" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_train_needs_epochs_or_budget(project, tmp_path: Path):
    with pytest.raises(SystemExit):
        device_run.main(["train", "tiny", str(tmp_path), *project["args"]])


def test_runs_where_mlflow_is_not_installed(project, tmp_path: Path):
    """The reason the script exists: the stages import mlflow at module level, and the GPU machine lacks it."""
    hide_mlflow = ("import runpy, sys; sys.modules.update({'mlflow': None, 'mlflow.tracking': None}); "
                   "runpy.run_module('scripts.device_run', run_name='__main__')")
    args = ["train", "tiny", str(tmp_path), "--epochs", "1", *project["args"]]
    done = subprocess.run([sys.executable, "-c", hide_mlflow, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert torch.load(tmp_path / "models" / "tiny-seed0.pt", weights_only=False)["mlflow_run_id"] == device_run.NO_RUN
