"""Training in the library loop and the train stage: determinism, exact resume and the files a run writes.

Everything runs on a tiny autoencoder and a few hundred generated images, in tmp project roots (COMPRESSNET_ROOT)
and against throwaway MLflow stores in tmp dirs (never the repo's mlflow.db or mlartifacts/).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.lib.device import processor_name
from pipeline.lib.models import build_model
from pipeline.lib.trainer import Trainer
from tests.conftest import TINY_SPEC
from tests.train_support import (
    EXPERIMENT,
    RUN,
    VARIANT,
    assert_same_weights,
    clean_environment,
    load,
    make_params,
    run_files,
    spy_batches,
    spy_epochs,
    train,
    train_untracked,
    use_store,
)

# ---------------------------------------------------------------- determinism and resume


def test_same_seed_gives_identical_weights_and_history(baseline, root, store):
    final = train(make_params())
    assert_same_weights(load(final)["state_dict"], baseline["saved"]["state_dict"])
    again = pd.read_csv(root / "reports" / "history" / f"{RUN}.csv")
    first = pd.read_csv(baseline["history"])
    for column in ("train_loss", "val_loss"):
        assert again[column].tolist() == first[column].tolist()


def test_other_seed_gives_other_weights(baseline, root, store):
    final = train(make_params(), seed=1)  # a seed that is not in params' seeds: trains all the same
    assert final == root / "models" / "tiny-seed1.pt"
    saved = load(final)
    assert saved["seed"] == 1
    assert any(not torch.equal(saved["state_dict"][k], v) for k, v in baseline["saved"]["state_dict"].items())


def test_tracking_does_not_change_training(baseline, prepared, tmp_path, monkeypatch):
    """train_run with the no-op tracker: the tracked run's weights and history, no MLflow run, no store."""
    clean_environment(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'untouched.db'}")
    final = train_untracked(make_params(), prepared, tmp_path / "out")
    assert final == tmp_path / "out" / "models" / f"{RUN}.pt"
    saved = load(final)
    assert_same_weights(saved["state_dict"], baseline["saved"]["state_dict"])
    assert saved["mlflow_run_id"] is None
    history = pd.read_csv(tmp_path / "out" / "history" / f"{RUN}.csv")
    assert history.val_loss.tolist() == pd.read_csv(baseline["history"]).val_loss.tolist()
    assert (tmp_path / "out" / "models" / f"{RUN}.best.pt").exists()
    assert not (tmp_path / "out" / "checkpoints" / f"{RUN}.ckpt").exists()
    assert not (tmp_path / "untouched.db").exists()


def test_steps_per_epoch_trains_on_a_seeded_subset_each_epoch(prepared, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(torch.nn.functional, "mse_loss", spy_batches(torch.nn.functional.mse_loss, seen))
    saved = load(train_untracked(make_params(epochs=2, steps_per_epoch=3, schedule="onecycle"), prepared, tmp_path))
    train_batches = [n for n in seen if n == 32]  # val batches are larger
    assert len(train_batches) == 2 * 3 and saved["train"]["steps_per_epoch"] == 3
    history = pd.read_csv(tmp_path / "history" / f"{RUN}.csv")
    assert (history.images_per_s * history.seconds).round().tolist() == [96, 96]


def test_interrupted_run_resumes_to_identical_weights(baseline, root, store, monkeypatch, capsys):
    ckpt = root / "checkpoints" / f"{RUN}.ckpt"
    ran = spy_epochs(monkeypatch, stop_at=2)  # stop while the 3rd epoch starts: epochs 1-2 are checkpointed
    with pytest.raises(KeyboardInterrupt):
        train(make_params())
    assert ran == [0, 1]
    assert ckpt.exists() and not (root / "models" / f"{RUN}.pt").exists()
    interrupted = load(ckpt)["run_id"]
    assert store.get_run(interrupted).info.status == "KILLED"

    ran = spy_epochs(monkeypatch)
    capsys.readouterr()
    saved = load(train(make_params()))
    assert f"resuming {RUN} after epoch 2" in capsys.readouterr().out
    assert ran == [2]
    assert_same_weights(saved["state_dict"], baseline["saved"]["state_dict"])
    assert saved["epochs"] == 3
    assert len(pd.read_csv(root / "reports" / "history" / f"{RUN}.csv")) == 3
    assert not ckpt.exists()
    # the resumed training continues the same MLflow run, which now holds all three epochs
    assert saved["mlflow_run_id"] == interrupted
    assert store.get_run(interrupted).info.status == "FINISHED"
    assert [m.step for m in store.get_metric_history(interrupted, "val_loss")] == [1, 2, 3]


@pytest.mark.parametrize("change", ["new store", "other experiment"])
def test_resume_when_the_mlflow_run_is_gone(change, baseline, root, empty_store, store, tmp_path, monkeypatch, capsys):
    """After the interruption the store was reset / MLFLOW_TRACKING_URI changed, or MLFLOW_EXPERIMENT_NAME
    changed (not part of the job fingerprint): the weights resume, the MLflow record goes to a new run."""
    spy_epochs(monkeypatch, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        train(make_params())
    lost = load(root / "checkpoints" / f"{RUN}.ckpt")["run_id"]

    client, experiment = store, EXPERIMENT
    if change == "new store":
        client = MlflowClient(tracking_uri=use_store(tmp_path / "fresh-store", empty_store, monkeypatch))
    else:
        experiment = "renamed"
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    ran = spy_epochs(monkeypatch)
    capsys.readouterr()
    saved = load(train(make_params()))
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
        [m.value for m in baseline["client"].get_metric_history(baseline["run"].info.run_id, "val_loss")], rel=1e-6
    )


def test_checkpoint_of_other_params_is_ignored(baseline, prepared, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "checkpoints" / f"{RUN}.ckpt"
    spy_epochs(monkeypatch, stop_at=1)
    with pytest.raises(KeyboardInterrupt):
        train_untracked(make_params(lr=2e-3), prepared, tmp_path)  # leaves a checkpoint of a job with another lr
    assert ckpt.exists()

    ran = spy_epochs(monkeypatch)
    capsys.readouterr()
    saved = load(train_untracked(make_params(), prepared, tmp_path))
    printed = capsys.readouterr().out
    assert "ignoring" in printed and "resuming" not in printed
    assert ran == [0, 1, 2]
    assert_same_weights(saved["state_dict"], baseline["saved"]["state_dict"])
    assert not ckpt.exists()


# ---------------------------------------------------------------- output files

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_objective",
    "val_loss",
    "lr",
    "seconds",
    "images_per_s",
    "val_output_range",
]


def test_model_files_and_history(baseline, prepared):
    models = baseline["out"] / "models"
    saved = baseline["saved"]
    params = make_params()
    assert baseline["final"] == models / f"{RUN}.pt"
    assert saved["variant"] == VARIANT and saved["epochs"] == 3 and saved["seed"] == 0
    assert saved["spec"]["encoder_filters"] == TINY_SPEC["encoder_filters"]
    assert saved["spec"]["latent_dim"] == TINY_SPEC["latent_dim"]
    assert saved["train"]["epochs"] == 3 and saved["train"]["batch_size"] == 32
    assert saved["train"]["lr"] == params.train.lr
    assert saved["data_manifest_sha256"] == hashlib.sha256((prepared / "manifest.json").read_bytes()).hexdigest()
    assert saved["mlflow_run_id"] == baseline["run"].info.run_id
    assert saved["precision_used"] in ("fp32", "bf16")
    assert saved["processor"] == processor_name(torch.device("cpu")) and saved["threads_used"] >= 1
    # outside DVC the stage records its provenance as unknown (dvc.lock is read only under DVC_ROOT)
    assert saved["dvc"] == {"prepared_md5": "unknown", "prepare_lock_sha256": "unknown"}
    model = build_model(saved["spec"])
    model.load_state_dict(saved["state_dict"])  # the saved spec rebuilds the saved weights

    best = load(models / f"{RUN}.best.pt")
    history = pd.read_csv(baseline["history"])
    assert list(history.columns) == HISTORY_COLUMNS
    assert history.epoch.tolist() == [1, 2, 3]
    assert np.isfinite(history[HISTORY_COLUMNS[1:]].to_numpy()).all()
    assert best["best_epoch"] == int(history.epoch[history.val_loss.idxmin()])
    assert best["state_dict"].keys() == saved["state_dict"].keys()
    if best["best_epoch"] == 3:
        assert_same_weights(best["state_dict"], saved["state_dict"])
    assert not (baseline["out"] / "checkpoints" / f"{RUN}.ckpt").exists()


def test_the_best_file_holds_the_weights_of_the_epoch_with_the_lowest_val_loss_not_the_last(
    prepared, tmp_path, monkeypatch
):
    after_epoch = []  # the model's weights as each epoch is validated
    validate = Trainer.validate

    def lowest_first(self, val_x, batch_size=256):
        after_epoch.append({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
        _, output_range = validate(self, val_x, batch_size)
        return [0.01, 0.03, 0.02][len(after_epoch) - 1], output_range  # epoch 1 lowest, epoch 3 below epoch 2

    monkeypatch.setattr(Trainer, "validate", lowest_first)
    final = train_untracked(make_params(), prepared, tmp_path)
    best = load(run_files(tmp_path).best_model)
    assert best["best_epoch"] == 1 and len(after_epoch) == 3
    assert_same_weights(best["state_dict"], after_epoch[0])
    assert_same_weights(load(final)["state_dict"], after_epoch[2])
    assert any(not torch.equal(best["state_dict"][k], after_epoch[2][k]) for k in after_epoch[2])  # it trained on
