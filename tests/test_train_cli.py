"""The train stage's command line (python -m pipeline.stages.train, as dvc.yaml runs it): bad params, an unknown
variant, a full disk or store and a missing seed each end in one line and exit 1 with nothing written, and a good
one trains the given seed from the root's params file."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow.exceptions
import pytest
import sqlalchemy.exc
import yaml

from pipeline import paths, tracking
from pipeline.stages import train as train_stage
from tests.conftest import TINY_SPEC
from tests.params_support import BASE_YAML, valid, write
from tests.train_support import VARIANT, load

# ---------------------------------------------------------------- bad input: one line, exit 1, nothing trained


@pytest.fixture
def no_training(monkeypatch) -> list:
    """The train stage's work replaced by a recorder (and MLflow by the no-op tracker): the CLI alone is tested."""
    calls = []

    def train(params, variant, seed, tracker):
        calls.append((variant, seed))
        return f"trained {variant} seed {seed}"

    monkeypatch.setattr(tracking, "MlflowTracker", tracking.NoOpTracker)
    monkeypatch.setattr(train_stage, "train", train)
    return calls


def test_train_cli_rejects_bad_params_before_training(project_root, no_training, capsys):
    raw = valid()
    raw["train"]["epochs"] = 0
    write(project_root, yaml.safe_dump(raw, sort_keys=False))  # the default params file: <root>/params.yaml
    assert train_stage.main(["up3", "--seed", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "train: error: train.epochs: expected an integer >= 1, got 0\n"
    assert no_training == [] and [p.name for p in project_root.iterdir()] == ["params.yaml"]  # nothing written


def test_train_cli_unknown_variant_is_one_line(tmp_path, no_training, capsys):
    path = write(tmp_path, BASE_YAML)
    assert train_stage.main(["nope", "--seed", "0", "--params", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "train: error: variants.nope: no such variant; known: up3, up4\n"
    assert no_training == []


FULL_DISK = OSError(errno.ENOSPC, "No space left on device", "/x/models/up3-seed0.pt")


def full_store() -> Exception:
    """What MLflow's sqlite store raises on a full disk: its exception, caused by SQLAlchemy's, caused by sqlite's."""
    driver = sqlite3.OperationalError("database or disk is full")
    try:
        try:
            raise sqlalchemy.exc.OperationalError("(autoflush advice)\nINSERT INTO runs", {}, driver)
        except sqlalchemy.exc.OperationalError as err:
            raise mlflow.exceptions.MlflowException(str(err)) from err
    except mlflow.exceptions.MlflowException as err:
        return err


@pytest.mark.parametrize(
    "error, line",
    [
        (FULL_DISK, "train: error: /x/models/up3-seed0.pt: No space left on device\n"),
        (full_store(), "train: error: database or disk is full\n"),
    ],
    ids=["disk", "store"],
)
def test_train_cli_turns_a_full_disk_or_store_into_one_line(tmp_path, monkeypatch, capsys, error, line):
    def train(params, variant, seed, tracker):
        raise error

    monkeypatch.setattr(tracking, "MlflowTracker", tracking.NoOpTracker)
    monkeypatch.setattr(train_stage, "train", train)
    assert train_stage.main(["up3", "--seed", "0", "--params", str(write(tmp_path, BASE_YAML))]) == 1
    assert capsys.readouterr().err == line


def test_train_cli_requires_a_seed_and_takes_any(tmp_path, no_training, capsys):
    path = write(tmp_path, BASE_YAML)
    with pytest.raises(SystemExit) as exit_:
        train_stage.main(["up3", "--params", str(path)])
    assert exit_.value.code == 2 and "the following arguments are required: --seed" in capsys.readouterr().err
    assert no_training == []
    assert train_stage.main(["up4", "--seed", "9", "--params", str(path)]) == 0  # 9 is not in seeds: [0, 1]
    assert no_training == [("up4", 9)] and capsys.readouterr().out == "train: trained up4 seed 9\n"


@pytest.mark.slow  # a Python that imports torch and MLflow: seconds; the tests above cover the same CLI in-process
def test_train_cli_as_a_module_rejects_bad_params(tmp_path):
    """`python -m pipeline.stages.train` as dvc.yaml runs it: exit status 1, one line, nothing written."""
    root = tmp_path / "project"
    root.mkdir()
    raw = valid()
    raw["variants"]["up3"]["latent_dim"] = 0
    write(root, yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "COMPRESSNET_ROOT": str(root)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.train", "up3", "--seed", "0"],
        cwd=paths.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert result.stderr == "train: error: variants.up3.latent_dim: expected an integer >= 1, got 0\n"
    assert [p.name for p in root.iterdir()] == ["params.yaml"]


# ---------------------------------------------------------------- in a project root, with tracking


def write_params(root: Path, **raw) -> Path:
    path = root / "params.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "variants": {VARIANT: TINY_SPEC},
                "seeds": [0],
                "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "threads": 1},
                "mlflow": {"log_model": False},
                **raw,
            }
        )
    )
    return path


def test_cli_trains_the_given_seed_from_the_root_params_file(root, store, capsys):
    write_params(root)
    assert train_stage.main([VARIANT, "--seed", "3"]) == 0  # params.yaml at paths.root(); seed 3 not in seeds
    final = root / "models" / "tiny-seed3.pt"
    assert f"train: wrote {final}" in capsys.readouterr().out
    saved = load(final)
    assert saved["seed"] == 3 and saved["epochs"] == 1
    assert store.get_run(saved["mlflow_run_id"]).info.status == "FINISHED"


def test_cli_errors_are_one_line_and_exit_1(root, store, tmp_path, capsys):
    params = write_params(tmp_path)
    assert train_stage.main(["nosuch", "--seed", "0", "--params", str(params)]) == 1
    assert "train: error: variants.nosuch: no such variant" in capsys.readouterr().err
    shutil.rmtree(root / "data" / "prepared")
    assert train_stage.main([VARIANT, "--seed", "0", "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("train: error: ") and "manifest.json: missing; run the prepare stage first" in err
    assert not (root / "models").exists()
    with pytest.raises(SystemExit) as exit_:
        train_stage.main([VARIANT, "--params", str(params)])  # --seed is required
    assert exit_.value.code == 2 and "--seed" in capsys.readouterr().err
