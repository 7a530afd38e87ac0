"""pipeline/tools/device_run.py: the training and evaluation library run with the no-op tracker (no MLflow)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline import paths
from pipeline.lib import schema
from pipeline.lib.config import load_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.stages.classifier import train_classifier
from pipeline.tools import device_run
from pipeline.tracking import NoOpTracker
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """A params file, prepared data and a classifier (trained by the classifier stage, untracked) in a tmp root."""
    root = tmp_path_factory.mktemp("device_run")
    raw = {
        "data": {"source": str(make_emnist_dir(root / "emnist"))},
        "seeds": [0],
        "train": {"batch_size": 64, "threads": 1, "device": "cpu"},
        "classifier": {"epochs": 1, "batch_size": 32},
        "variants": {"tiny": TINY_SPEC},
    }
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    params = load_params(params_file)
    prepared = root / "data" / "prepared"
    prepare_from_directory(params.data, Path(params.data.source), prepared)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPRESSNET_ROOT", str(root))
        train_classifier(params, NoOpTracker())
        classifier = paths.classifier_file()
    return {
        "root": root,
        "args": ["--params", str(params_file), "--prepared", str(prepared), "--classifier", str(classifier)],
    }


def test_train_then_evaluate_without_mlflow(project, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "out"
    assert device_run.main(["train", "tiny", str(out), "--epochs", "2", *project["args"]]) == 0
    saved = torch.load(out / "models" / "tiny-seed0.pt", weights_only=False)
    assert saved["mlflow_run_id"] is None
    assert saved["epochs"] == 2 and saved["train"]["steps_per_epoch"] is None
    assert (out / "models" / "tiny-seed0.best.pt").exists()
    assert not (out / "checkpoints" / "tiny-seed0.ckpt").exists()
    assert len(pd.read_csv(out / "history" / "tiny-seed0.csv")) == 2
    info = json.loads((out / "train-tiny-seed0.json").read_text())
    assert info["epochs"] == 2 and info["device"] == "cpu"

    assert device_run.main(["evaluate", "tiny", str(out), "--refine-steps", "2", *project["args"]]) == 0
    metrics = schema.load(out / "reports" / "metrics" / "tiny-seed0.json")  # the stage's metrics schema
    assert metrics["refine_steps"] == 2 and metrics["run"]["mlflow_run_id"] is None
    assert metrics["epochs"] == 2 and metrics["data_manifest_sha256"] == saved["data_manifest_sha256"]
    assert math.isfinite(metrics["psnr"]) and 0 < metrics["bytes_per_image_uint8_range"]
    assert not (tmp_path / "mlflow.db").exists()  # nothing reached the tracking store


def test_budget_picks_whole_epochs(project, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(device_run, "seconds_per_epoch", lambda *_: 10.0)
    assert device_run.main(["train", "tiny", str(tmp_path / "a"), "--budget-s", "100", *project["args"]]) == 0
    assert "-> 7 epochs in" in capsys.readouterr().out  # 100 s / (10 s x 1.3 margin)
    assert torch.load(tmp_path / "a" / "models" / "tiny-seed0.pt", weights_only=False)["epochs"] == 7
    monkeypatch.setattr(device_run, "MAX_EPOCHS", 3)
    assert device_run.main(["train", "tiny", str(tmp_path / "b"), "--budget-s", "1e9", *project["args"]]) == 0
    assert "-> 3 epochs in" in capsys.readouterr().out  # a huge budget is capped
    assert torch.load(tmp_path / "b" / "models" / "tiny-seed0.pt", weights_only=False)["epochs"] == 3


def test_an_epochs_time_is_the_timed_steps_scaled_to_a_full_epochs_steps(project, monkeypatch):
    timed = []  # the images each train_epoch call ran, warm-up first
    monkeypatch.setattr(
        device_run.Trainer, "train_epoch", lambda self, x, epoch, progress: timed.append(self.images_per_epoch)
    )
    clock = iter([100.0, 106.0])  # the timed steps took 6 s
    monkeypatch.setattr(device_run.time, "perf_counter", lambda: next(clock))
    params = load_params(Path(project["args"][1]))  # batch 64; the stand-in's train split below
    train_images = len(np.load(Path(project["args"][3]) / "train_images.npy"))
    seconds = device_run.seconds_per_epoch(params, "tiny", Path(project["args"][3]), steps=3)
    assert timed == [20 * 64, 3 * 64]
    assert seconds == pytest.approx(6.0 / 3 * math.ceil(train_images / 64))  # per step, times a full epoch's steps


def test_a_budget_under_one_epoch_says_so_and_a_budget_below_zero_is_refused(project, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(device_run, "seconds_per_epoch", lambda *_: 10.0)
    monkeypatch.setattr(device_run, "train_run", lambda *args: tmp_path / "never written")
    monkeypatch.setattr(device_run, "sha256_file", lambda path: "")
    assert device_run.main(["train", "tiny", str(tmp_path / "a"), "--budget-s", "5", *project["args"]]) == 0
    assert "-> 1 epochs in 5 s (the budget is under one epoch with its 30% margin: one epoch anyway)" in (
        capsys.readouterr().out
    )
    with pytest.raises(SystemExit) as exit_:
        device_run.main(["train", "tiny", str(tmp_path / "b"), "--budget-s", "-5", *project["args"]])
    assert exit_.value.code == 2 and "--budget-s must be a number of seconds > 0, not -5.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        device_run.main(["train", "tiny", str(tmp_path / "c"), "--budget-s", "inf", *project["args"]])
    assert "--budget-s must be a number of seconds > 0, not inf" in capsys.readouterr().err


def test_ctrl_c_is_one_line(project, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(device_run, "run_evaluate", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert device_run.main(["evaluate", "tiny", str(tmp_path), *project["args"]]) == 130
    assert capsys.readouterr().err == "device_run: interrupted\n"


def own_epochs_params(project, tmp_path: Path) -> Path:
    """The project's params with the variant setting its own train.epochs."""
    raw = yaml.safe_load(Path(project["args"][1]).read_text())
    raw["variants"]["tiny"]["train"] = {"epochs": 5}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    return params_file


def test_variant_own_epochs_is_an_error(project, tmp_path: Path, capsys):
    args = ["train", "tiny", str(tmp_path), "--epochs", "1", *project["args"]]
    args[args.index("--params") + 1] = str(own_epochs_params(project, tmp_path))
    assert device_run.main(args) == 2
    assert "variants.tiny.train sets its own epochs" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_variant_own_epochs_does_not_block_codec_keys(project, tmp_path: Path):
    """Only --epochs conflicts with a variant's own train: block; evaluate's --refine-steps does not."""
    args = argparse.Namespace(
        params=own_epochs_params(project, tmp_path), outdir=tmp_path, command="evaluate", variant="tiny", seed=0
    )
    params = device_run.params_with(args, "codec", refine_steps=3)
    assert params.codec.refine_steps == 3 and params.train_for("tiny").epochs == 5


@pytest.mark.parametrize("choice", [[], ["--epochs", "1", "--budget-s", "60"]])
def test_train_needs_epochs_or_budget(project, tmp_path: Path, capsys, choice):
    with pytest.raises(SystemExit) as exit_:
        device_run.main(["train", "tiny", str(tmp_path), *choice, *project["args"]])
    assert exit_.value.code == 2
    assert "train needs exactly one of --epochs and --budget-s" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


@pytest.mark.slow  # a fresh interpreter importing torch, then an epoch
def test_runs_where_mlflow_is_not_installed(project, tmp_path: Path):
    """The reason the tool exists: the GPU machine has no MLflow (nor DVC)."""
    hide_mlflow = (
        "import runpy, sys; sys.modules.update({'mlflow': None, 'mlflow.tracking': None}); "
        "runpy.run_module('pipeline.tools.device_run', run_name='__main__')"
    )
    args = ["train", "tiny", str(tmp_path), "--epochs", "1", *project["args"]]
    done = subprocess.run(
        [sys.executable, "-c", hide_mlflow, *args], cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert torch.load(tmp_path / "models" / "tiny-seed0.pt", weights_only=False)["mlflow_run_id"] is None


def test_inputs_that_are_not_there_are_one_line_errors(project, tmp_path: Path, capsys):
    def run(*args: str) -> str:
        assert device_run.main(list(args)) == 2
        err = capsys.readouterr().err
        assert err.startswith("device_run: ") and err.count("\n") == 1, err
        return err

    params, prepared, classifier = project["args"][1::2]
    nowhere = str(tmp_path / "nowhere")
    assert "manifest.json" in run(
        "train", "tiny", str(tmp_path / "a"), "--epochs", "1", "--params", params, "--prepared", nowhere
    )
    assert "tiny-seed0.csv: missing" in run(
        "evaluate", "tiny", str(tmp_path / "b"), "--params", params, "--prepared", prepared
    )
    assert f"{nowhere}.yaml: No such file" in run(
        "train", "tiny", str(tmp_path / "c"), "--epochs", "1", "--params", nowhere + ".yaml"
    )
