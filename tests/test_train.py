"""The train stage: determinism, exact resume, output files, MLflow run contents, divergence, tracking paths.

Everything runs on a tiny autoencoder and a few hundred fake images, against throwaway MLflow stores in tmp
dirs (never the repo's mlflow.db or mlartifacts/).
"""
from __future__ import annotations

import hashlib
import itertools
import math
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from skimage.metrics import structural_similarity

from pipeline import data, tracking
from pipeline.config import REPO_ROOT, DataConfig, parse_params
from pipeline.models import build_model
from pipeline.prepare import prepare
from pipeline.train import (OBJECTIVES, Trainer, TrainingDiverged, as_batch_tensor, log_mse, log_mse_ssim,
                            train_variant)
from tests.fakedata import make_emnist_dir

VARIANT = "tiny"
RUN = "tiny-seed0"  # file stem of VARIANT trained with seed 0
TINY = {"encoder_filters": [4, 8], "encoder_strides": [2, 2], "latent_dim": 8,
        "decoder_filters": [8, 4], "decoder_strides": [2, 2], "latent_activation": "linear"}
EXPERIMENT = "test-train"
HISTORY_COLUMNS = ["epoch", "train_loss", "train_objective", "val_loss", "lr", "seconds", "images_per_s"]
TRAIN_EPOCH = Trainer.train_epoch  # the real one, whatever a test has patched in


def make_params(epochs: int = 3, seed: int = 0, log_model: bool = False, experiment: str = EXPERIMENT, **train):
    return parse_params({
        "variants": {VARIANT: TINY},
        "seeds": [seed],
        "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "device": "cpu", "threads": 1,
                  **train},
        "mlflow": {"experiment": experiment, "log_model": log_model},
    })


def outputs(out: Path) -> dict[str, Path]:
    return {"models_dir": out / "models", "history_dir": out / "history", "checkpoint_dir": out / "checkpoints"}


def train(params, prepared: Path, out: Path) -> Path:
    return train_variant(params, VARIANT, params.seeds[0], prepared=prepared, **outputs(out))


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


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    out = root / "prepared"
    prepare(DataConfig(source=str(make_emnist_dir(root / "emnist"))), out)
    return out


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite file with the schema already created (creating it takes seconds); tests copy it."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def use_store(directory: Path, empty_store: Path, monkeypatch) -> str:
    shutil.copy(empty_store, directory / "mlflow.db")
    uri = f"sqlite:///{directory}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                 "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    return uri


@pytest.fixture
def store(tmp_path, empty_store, monkeypatch):
    """A fresh sqlite store in tmp_path, used through MLFLOW_TRACKING_URI; yields a client on it."""
    uri = use_store(tmp_path, empty_store, monkeypatch)
    yield MlflowClient(tracking_uri=uri)
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # forget the tmp store; monkeypatch then restores the environment


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, prepared, empty_store) -> dict:
    """One uninterrupted 3-epoch run (seed 0) in its own store, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("baseline")
    with pytest.MonkeyPatch.context() as monkeypatch:
        uri = use_store(out, empty_store, monkeypatch)
        try:
            final = train(make_params(), prepared, out)
        finally:
            mlflow.set_tracking_uri(None)
    saved = load(final)
    return {"out": out, "final": final, "saved": saved, "client": MlflowClient(tracking_uri=uri),
            "run": MlflowClient(tracking_uri=uri).get_run(saved["mlflow_run_id"])}


# ---------------------------------------------------------------- determinism and resume

def test_same_seed_gives_identical_weights_and_history(baseline, prepared, store, tmp_path):
    final = train(make_params(), prepared, tmp_path / "again")
    assert_same_weights(load(final)["state_dict"], baseline["saved"]["state_dict"])
    again = pd.read_csv(tmp_path / "again" / "history" / f"{RUN}.csv")
    first = pd.read_csv(baseline["out"] / "history" / f"{RUN}.csv")
    for column in ("train_loss", "val_loss"):
        assert again[column].tolist() == first[column].tolist()


def test_other_seed_gives_other_weights(baseline, prepared, store, tmp_path):
    other = load(train(make_params(seed=1), prepared, tmp_path / "seed1"))["state_dict"]
    assert any(not torch.equal(other[k], v) for k, v in baseline["saved"]["state_dict"].items())


def test_steps_per_epoch_trains_on_a_seeded_subset_each_epoch(prepared, store, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(torch.nn.functional, "mse_loss", _spy_batches(torch.nn.functional.mse_loss, seen))
    saved = load(train(make_params(epochs=2, steps_per_epoch=3, schedule="onecycle"), prepared, tmp_path))
    train_batches = [n for n in seen if n == 32]  # val batches are larger
    assert len(train_batches) == 2 * 3 and saved["train"]["steps_per_epoch"] == 3
    history = pd.read_csv(tmp_path / "history" / f"{RUN}.csv")
    assert (history.images_per_s * history.seconds).round().tolist() == [96, 96]


def test_log_mse_is_the_mean_log_per_image_error():
    x = torch.zeros(2, 1, 28, 28)
    recon = torch.cat([torch.full((1, 1, 28, 28), 0.1), torch.full((1, 1, 28, 28), 0.01)])
    # per-image MSE 1e-2 and 1e-4: the second image counts as much as the first despite a 100x smaller error
    expected = (math.log(1e-2 + 1e-5) + math.log(1e-4 + 1e-5)) / 2
    assert log_mse(recon, x).item() == pytest.approx(expected, rel=1e-6)


def test_log_mse_ssim_adds_the_log_dissimilarity_scikit_image_measures():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=generator, dtype=torch.float64)
    recon = (x + 0.1 * torch.randn(3, 1, 28, 28, generator=generator, dtype=torch.float64)).clamp(0, 1)
    ssim = [structural_similarity(x[i, 0].numpy(), recon[i, 0].numpy(), data_range=1.0, win_size=11,
                                  use_sample_covariance=True) for i in range(3)]
    expected = log_mse(recon, x).item() + sum(math.log(1 - s + 1e-4) for s in ssim) / 3
    assert log_mse_ssim(recon.float(), x.float()).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("objective", ["mse", "log_mse", "log_mse_ssim"])
def test_train_loss_is_the_training_mse_whatever_the_objective(prepared, objective):
    train_x = as_batch_tensor(data.load_split(prepared, "train")[0], torch.device("cpu"))
    params = make_params(epochs=1, lr=1e-9, loss=objective)  # lr ~0: the epoch sees the initial model throughout
    trainer = Trainer(params, VARIANT, 0, torch.device("cpu"), train_images=len(train_x))
    with torch.no_grad():
        initial_mse = torch.nn.functional.mse_loss(trainer.model(train_x), train_x).item()
    losses = trainer.train_epoch(train_x, 0)
    assert losses["train_loss"] == pytest.approx(initial_mse, rel=1e-4)
    with torch.no_grad():
        expected = OBJECTIVES[objective](trainer.model(train_x), train_x).item()
    assert losses["train_objective"] == pytest.approx(expected, rel=1e-3)


def test_with_a_rate_term_train_loss_is_still_the_mse(prepared):
    train_x = as_batch_tensor(data.load_split(prepared, "train")[0], torch.device("cpu"))
    params = parse_params({"variants": {VARIANT: {**TINY, "rate_weight": 1.0}},
                           "train": {"epochs": 1, "batch_size": 32, "lr": 1e-9, "device": "cpu", "threads": 1}})
    trainer = Trainer(params, VARIANT, 0, torch.device("cpu"), train_images=len(train_x))
    losses = trainer.train_epoch(train_x, 0)
    trainer.model.eval()
    with torch.no_grad():  # rounded latents here, noisy ones in training: close, not equal
        recon, bits = trainer.model.forward_with_rate(train_x)
    assert losses["train_loss"] == pytest.approx(torch.nn.functional.mse_loss(recon, train_x).item(), rel=0.05)
    rate = bits.mean().item() / train_x[0].numel()  # rate_weight 1 x bits per pixel
    assert losses["train_objective"] - losses["train_loss"] == pytest.approx(rate, rel=0.25)


def test_the_objective_changes_what_is_learned(prepared):
    train_x = as_batch_tensor(data.load_split(prepared, "train")[0], torch.device("cpu"))
    weights = {}
    for objective in ("mse", "log_mse", "log_mse_ssim"):
        trainer = Trainer(make_params(epochs=1, loss=objective), VARIANT, 0, torch.device("cpu"), len(train_x))
        trainer.train_epoch(train_x, 0)
        weights[objective] = trainer.model.state_dict()
    for a, b in itertools.combinations(weights, 2):
        assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[a]), (a, b)


def _spy_batches(loss_fn, seen: list):
    def spy(prediction, target, *args, **kwargs):
        seen.append(len(target))
        return loss_fn(prediction, target, *args, **kwargs)
    return spy


def test_interrupted_run_resumes_to_identical_weights(baseline, prepared, store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "resumed"
    ckpt = out / "checkpoints" / f"{RUN}.ckpt"
    ran = spy_epochs(monkeypatch, stop_at=2)  # stop while the 3rd epoch starts: epochs 1-2 are checkpointed
    with pytest.raises(KeyboardInterrupt):
        train(make_params(), prepared, out)
    assert ran == [0, 1]
    assert ckpt.exists() and not (out / "models" / f"{RUN}.pt").exists()
    interrupted = load(ckpt)["run_id"]
    assert store.get_run(interrupted).info.status == "KILLED"

    ran = spy_epochs(monkeypatch)
    capsys.readouterr()
    final = train(make_params(), prepared, out)
    assert f"resuming {RUN} after epoch 2" in capsys.readouterr().out
    assert ran == [2]
    saved = load(final)
    assert_same_weights(saved["state_dict"], baseline["saved"]["state_dict"])
    assert saved["epochs"] == 3
    assert len(pd.read_csv(out / "history" / f"{RUN}.csv")) == 3
    assert not ckpt.exists()
    # the resumed training continues the same MLflow run, which now holds all three epochs
    assert saved["mlflow_run_id"] == interrupted
    run = store.get_run(interrupted)
    assert run.info.status == "FINISHED"
    assert [m.step for m in store.get_metric_history(interrupted, "val_loss")] == [1, 2, 3]


@pytest.mark.parametrize("change", ["new store", "other experiment"])
def test_resume_when_the_mlflow_run_is_gone(change, baseline, prepared, empty_store, store, tmp_path, monkeypatch,
                                            capsys):
    """After the interruption the store was reset / MLFLOW_TRACKING_URI changed, or mlflow.experiment was
    renamed (not part of the job fingerprint): the weights resume, the MLflow record goes to a new run."""
    out = tmp_path / "out"
    spy_epochs(monkeypatch, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        train(make_params(), prepared, out)
    lost = load(out / "checkpoints" / f"{RUN}.ckpt")["run_id"]

    client, experiment = store, "renamed"
    if change == "new store":
        fresh, experiment = tmp_path / "fresh-store", EXPERIMENT
        fresh.mkdir()
        client = MlflowClient(tracking_uri=use_store(fresh, empty_store, monkeypatch))
    ran = spy_epochs(monkeypatch)
    capsys.readouterr()
    saved = load(train(make_params(experiment=experiment), prepared, out))
    printed = capsys.readouterr().out
    assert f"resuming {RUN} after epoch 2" in printed and "logging to a new run" in printed
    assert ran == [2]
    assert_same_weights(saved["state_dict"], baseline["saved"]["state_dict"])
    assert saved["mlflow_run_id"] != lost
    run = client.get_run(saved["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.001"
    assert run.inputs.dataset_inputs
    # the epochs trained before the interruption are in the new run too
    val = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in val] == [1, 2, 3]
    assert [m.value for m in val] == pytest.approx(
        [m.value for m in baseline["client"].get_metric_history(baseline["run"].info.run_id, "val_loss")], rel=1e-6)


def test_checkpoint_of_other_params_is_ignored(baseline, prepared, store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "other"
    spy_epochs(monkeypatch, stop_at=1)
    with pytest.raises(KeyboardInterrupt):
        train(make_params(lr=2e-3), prepared, out)  # leaves a checkpoint of a job with another lr
    assert (out / "checkpoints" / f"{RUN}.ckpt").exists()

    ran = spy_epochs(monkeypatch)
    capsys.readouterr()
    saved = load(train(make_params(), prepared, out))
    printed = capsys.readouterr().out
    assert "ignoring" in printed and "resuming" not in printed
    assert ran == [0, 1, 2]
    assert_same_weights(saved["state_dict"], baseline["saved"]["state_dict"])
    assert not (out / "checkpoints" / f"{RUN}.ckpt").exists()


# ---------------------------------------------------------------- output files

def test_model_files_and_history(baseline, prepared):
    models = baseline["out"] / "models"
    saved = baseline["saved"]
    params = make_params()
    assert saved["variant"] == VARIANT and saved["epochs"] == 3
    assert saved["spec"]["encoder_filters"] == TINY["encoder_filters"]
    assert saved["spec"]["latent_dim"] == TINY["latent_dim"]
    assert saved["train"]["epochs"] == 3 and saved["train"]["batch_size"] == 32
    assert saved["train"]["lr"] == params.train.lr and saved["seed"] == 0
    assert saved["data_manifest_sha256"] == hashlib.sha256((prepared / "manifest.json").read_bytes()).hexdigest()
    assert saved["mlflow_run_id"] == baseline["run"].info.run_id
    model = build_model(saved["spec"])
    model.load_state_dict(saved["state_dict"])  # the saved spec rebuilds the saved weights

    best = load(models / f"{RUN}.best.pt")
    history = pd.read_csv(baseline["out"] / "history" / f"{RUN}.csv")
    assert list(history.columns) == HISTORY_COLUMNS
    assert history.epoch.tolist() == [1, 2, 3]
    assert np.isfinite(history[HISTORY_COLUMNS[1:]].to_numpy()).all()
    assert best["best_epoch"] == int(history.epoch[history.val_loss.idxmin()])
    assert best["state_dict"].keys() == saved["state_dict"].keys()
    if best["best_epoch"] == 3:
        assert_same_weights(best["state_dict"], saved["state_dict"])
    assert not (baseline["out"] / "checkpoints" / f"{RUN}.ckpt").exists()


# ---------------------------------------------------------------- MLflow

def test_mlflow_run_params_metrics_tags(baseline):
    run, client = baseline["run"], baseline["client"]
    assert run.info.run_name == RUN and run.data.params["seed"] == "0"
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    p = run.data.params
    assert p["train.lr"] == "0.001" and p["train.epochs"] == "3" and p["train.batch_size"] == "32"
    assert p["variant.latent_dim"] == "8" and p["variant.encoder_filters"] == "[4, 8]"
    assert p["data.val_fraction"] == "0.1" and p["variant.name"] == VARIANT
    history = pd.read_csv(baseline["out"] / "history" / f"{RUN}.csv")
    for name in ("val_loss", "train_loss", "lr"):
        metric = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in metric] == [1, 2, 3], name
    val = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.value for m in val] == pytest.approx(history.val_loss.tolist(), rel=1e-6)
    tags = run.data.tags
    assert tags["stage"] == f"train@{VARIANT}-0" and tags["variant"] == VARIANT and tags["seed"] == "0"
    assert tags["git_dirty"] in ("true", "false") and tags["git_commit"]
    assert tags["data.manifest_sha256"] == baseline["saved"]["data_manifest_sha256"]
    assert "dvc_exp_name" not in tags


def test_mlflow_artifacts_and_dataset_stay_in_tmp(baseline):
    run, client = baseline["run"], baseline["client"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "history.json"} <= names
    assert "model" not in names  # log_model: false
    # artifacts live beside the tmp store's database, not in the repo's mlartifacts/
    assert run.info.artifact_uri.startswith((baseline["out"] / "mlartifacts").as_uri())
    assert (baseline["out"] / "mlartifacts" / run.info.run_id / "artifacts" / "loss_curve.png").exists()
    assert not (REPO_ROOT / "mlartifacts" / run.info.run_id).exists()
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "emnist-prepared-train"
    assert dataset.digest == baseline["saved"]["data_manifest_sha256"][:16]
    assert {t.key: t.value for t in inputs[0].tags}.get("mlflow.data.context") == "training"


def test_logged_model_loads_and_matches(prepared, store, tmp_path):
    final = train(make_params(epochs=1, log_model=True), prepared, tmp_path)
    saved = load(final)
    uri = f"runs:/{saved['mlflow_run_id']}/model"
    assert mlflow.models.get_model_info(uri).signature is not None
    logged = mlflow.pytorch.load_model(uri)  # a torch.export (pt2) program: no .eval(), no dropout/BN anyway
    model = build_model(saved["spec"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    x = as_batch_tensor(data.load_split(prepared, "val")[0][:16], torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(logged(x), model(x), rtol=0, atol=1e-6)
    assert not (REPO_ROOT / "mlartifacts" / saved["mlflow_run_id"]).exists()


def test_divergence_fails_fast_and_marks_run_failed(prepared, store, tmp_path, monkeypatch):
    # lr=9.9 does not reliably diverge (the sigmoid output bounds the MSE), so make the loss NaN directly
    mse = torch.nn.functional.mse_loss
    monkeypatch.setattr(torch.nn.functional, "mse_loss", lambda *a, **k: mse(*a, **k) * float("nan"))
    ran = spy_epochs(monkeypatch)
    with pytest.raises(TrainingDiverged, match="epoch 1:"):
        train(make_params(), prepared, tmp_path)
    assert ran == [0]
    assert not (tmp_path / "models" / f"{RUN}.pt").exists()
    assert not (tmp_path / "models" / f"{RUN}.best.pt").exists()
    assert not (tmp_path / "checkpoints" / f"{RUN}.ckpt").exists()
    runs = store.search_runs([store.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert mlflow.active_run() is None


def test_dvc_experiment_name_is_tagged(prepared, store, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "quick-fox")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    saved = load(train(make_params(epochs=1), prepared, tmp_path))
    tags = store.get_run(saved["mlflow_run_id"]).data.tags
    assert tags["dvc_exp_name"] == "quick-fox"
    assert tags["dvc_exp_baseline_rev"] == "abc123"


# ---------------------------------------------------------------- tracking paths

def test_project_root_strips_dvc_temp_workspace(tmp_path):
    root = tmp_path / "checkout"
    assert tracking.project_root(root / ".dvc" / "tmp" / "exps" / "tmpab12cd") == root
    assert tracking.project_root(root / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "pipeline") == root
    assert tracking.project_root(root) == root
    assert tracking.project_root(root / ".dvc" / "tmp") == root / ".dvc" / "tmp"
    assert tracking.project_root() == REPO_ROOT


def test_tracking_uri_and_artifact_location(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
    assert tracking.tracking_uri().startswith("sqlite:////")  # an absolute path
    assert tracking.artifact_location() == (REPO_ROOT / "mlartifacts").as_uri()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/elsewhere.db"
    assert tracking.artifact_location() == (tmp_path / "mlartifacts").as_uri()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, avx512_bf16, amx, expected):
    from pipeline.device import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice is kept
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
