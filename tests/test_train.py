"""Training: the library loop (determinism, exact resume, objectives, output files, divergence), the train stage
(what it records in MLflow, its command line) and where tracking goes.

Everything runs on a tiny autoencoder and a few hundred generated images, in tmp project roots (COMPRESSNET_ROOT)
and against throwaway MLflow stores in tmp dirs (never the repo's mlflow.db or mlartifacts/).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from skimage.metrics import structural_similarity

from pipeline import paths, tracking
from pipeline.lib import prepared as prepared_data
from pipeline.lib.config import DataConfig, parse_params, run_name
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.device import as_batch_tensor, processor_name, resolve_precision
from pipeline.lib.io import DataError
from pipeline.lib.losses import OBJECTIVES, log_mse, log_mse_ssim, objective
from pipeline.lib.models import build_model, training_flops_per_image
from pipeline.lib.trainer import Trainer, TrainingDiverged
from pipeline.lib.training import RunFiles, train_run
from pipeline.stages import train as train_stage
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir

VARIANT = "tiny"
RUN = run_name(VARIANT, 0)  # file stem of VARIANT trained with seed 0
EXPERIMENT = "test-train"  # MLFLOW_EXPERIMENT_NAME of the tests' stores
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
    monkeypatch.setattr(torch.nn.functional, "mse_loss", _spy_batches(torch.nn.functional.mse_loss, seen))
    saved = load(train_untracked(make_params(epochs=2, steps_per_epoch=3, schedule="onecycle"), prepared, tmp_path))
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
    ssim = [
        structural_similarity(
            x[i, 0].numpy(), recon[i, 0].numpy(), data_range=1.0, win_size=11, use_sample_covariance=True
        )
        for i in range(3)
    ]
    expected = log_mse(recon, x).item() + sum(math.log(1 - s + 1e-4) for s in ssim) / 3
    assert log_mse_ssim(recon.float(), x.float()).item() == pytest.approx(expected, rel=1e-5)


def test_objective_by_name_and_an_unknown_one_is_a_data_error():
    for name, function in OBJECTIVES.items():
        assert objective(name, "models/x.pt") is function
    with pytest.raises(DataError, match=r"models/x\.pt: trained on loss 'l1'"):
        objective("l1", "models/x.pt")


@pytest.mark.parametrize("loss", ["mse", "log_mse", "log_mse_ssim"])
def test_train_loss_is_the_training_mse_whatever_the_objective(prepared, loss):
    train_x = as_batch_tensor(prepared_data.load_split(prepared, "train")[0], CPU)
    params = make_params(epochs=1, lr=1e-9, loss=loss)  # lr ~0: the epoch sees the initial model throughout
    trainer = Trainer(params, VARIANT, 0, CPU, train_images=len(train_x))
    with torch.no_grad():
        initial_mse = torch.nn.functional.mse_loss(trainer.model(train_x), train_x).item()
    losses = trainer.train_epoch(train_x, 0)
    assert losses["train_loss"] == pytest.approx(initial_mse, rel=1e-4)
    with torch.no_grad():
        expected = OBJECTIVES[loss](trainer.model(train_x), train_x).item()
    assert losses["train_objective"] == pytest.approx(expected, rel=1e-3)


def test_the_model_file_stores_the_flop_count_of_the_objective_trained_on(prepared, tmp_path):
    params = make_params(epochs=1, loss="log_mse_ssim", steps_per_epoch=1)
    saved = torch.load(train_untracked(params, prepared, tmp_path), weights_only=False)
    spec = params.variant(VARIANT)
    assert saved["train_flops_per_image"] == training_flops_per_image(spec, objective=log_mse_ssim)
    assert saved["train_flops_per_image"] > training_flops_per_image(spec)  # the SSIM term's window filters count


def test_with_a_rate_term_train_loss_is_still_the_mse(prepared):
    train_x = as_batch_tensor(prepared_data.load_split(prepared, "train")[0], CPU)
    params = parse_params(
        {
            "variants": {VARIANT: {**TINY_SPEC, "rate_weight": 1.0}},
            "train": {"epochs": 1, "batch_size": 32, "lr": 1e-9, "device": "cpu", "threads": 1},
        }
    )
    trainer = Trainer(params, VARIANT, 0, CPU, train_images=len(train_x))
    losses = trainer.train_epoch(train_x, 0)
    trainer.model.eval()
    with torch.no_grad():  # rounded latents here, noisy ones in training: close, not equal
        recon, bits = trainer.model.forward_with_rate(train_x)
    assert losses["train_loss"] == pytest.approx(torch.nn.functional.mse_loss(recon, train_x).item(), rel=0.05)
    rate = bits.mean().item() / train_x[0].numel()  # rate_weight 1 x bits per pixel
    assert losses["train_objective"] - losses["train_loss"] == pytest.approx(rate, rel=0.25)


def test_the_objective_changes_what_is_learned(prepared):
    train_x = as_batch_tensor(prepared_data.load_split(prepared, "train")[0], CPU)
    weights = {}
    for loss in ("mse", "log_mse", "log_mse_ssim"):
        trainer = Trainer(make_params(epochs=1, loss=loss), VARIANT, 0, CPU, len(train_x))
        trainer.train_epoch(train_x, 0)
        weights[loss] = trainer.model.state_dict()
    for a, b in itertools.combinations(weights, 2):
        assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[a]), (a, b)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_follows_the_eager_loop(prepared, mode):
    """train.compile runs the batches' forward and loss through inductor (on CPU, reduce-overhead's CUDA graphs do
    not apply but its code path runs): the same losses and weights as the eager loop, up to float rounding."""
    train_x = as_batch_tensor(prepared_data.load_split(prepared, "train")[0], CPU)
    trainers = {
        form: Trainer(make_params(epochs=1, compile=form), VARIANT, 0, CPU, len(train_x)) for form in ("none", mode)
    }
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # a count over the process: not reset by reset()
    try:
        losses = {form: trainer.train_epoch(train_x, 0, progress=False) for form, trainer in trainers.items()}
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the compiled loop did compile
    finally:
        torch._dynamo.reset()  # its compiled code is not carried into other tests
    assert losses[mode] == pytest.approx(losses["none"], rel=1e-4)
    eager, compiled = (trainers[form].model.state_dict() for form in ("none", mode))
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-3, atol=1e-5)


def _spy_batches(loss_fn, seen: list):
    def spy(prediction, target, *args, **kwargs):
        seen.append(len(target))
        return loss_fn(prediction, target, *args, **kwargs)

    return spy


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


# ---------------------------------------------------------------- MLflow


def test_mlflow_run_params_metrics_tags(baseline):
    run, client = baseline["run"], baseline["client"]
    assert run.info.run_name == RUN and run.data.params["seed"] == "0"
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT  # MLFLOW_EXPERIMENT_NAME
    p = run.data.params
    assert p["train.lr"] == "0.001" and p["train.epochs"] == "3" and p["train.batch_size"] == "32"
    assert p["variant.latent_dim"] == "8" and p["variant.encoder_filters"] == "[4, 8]"
    assert p["data.val_fraction"] == "0.1" and p["variant.name"] == VARIANT
    history = pd.read_csv(baseline["history"])
    for name in ("val_loss", "train_loss", "lr"):
        metric = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in metric] == [1, 2, 3], name
    val = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.value for m in val] == pytest.approx(history.val_loss.tolist(), rel=1e-6)
    tags = run.data.tags
    assert tags["stage"] == f"train@{VARIANT}-0" and tags["variant"] == VARIANT and tags["seed"] == "0"
    assert tags["git_dirty"] in ("true", "false") and tags["git_commit"]
    assert tags["data.manifest_sha256"] == baseline["saved"]["data_manifest_sha256"]
    assert tags["train.precision_used"] == baseline["saved"]["precision_used"]
    assert tags["train.processor"] == baseline["saved"]["processor"]  # whose timings the epochs' seconds are
    assert tags["train.threads_used"] == str(baseline["saved"]["threads_used"])
    assert tags["train.dvc.prepare_lock_sha256"] == "unknown"
    assert tags["model_sha256"] == hashlib.sha256(baseline["final"].read_bytes()).hexdigest()
    assert "dvc_exp_name" not in tags


def test_mlflow_artifacts_and_dataset_stay_in_tmp(baseline):
    run, client = baseline["run"], baseline["client"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "history.json" in names
    assert "model" not in names  # log_model: false
    # artifacts live beside the tmp store's database, not in the repo's mlartifacts/
    store = baseline["out"] / "store"
    assert run.info.artifact_uri.startswith((store / "mlartifacts").as_uri())
    assert (store / "mlartifacts" / run.info.run_id / "artifacts" / "history.json").exists()
    assert not (paths.REPO_ROOT / "mlartifacts" / run.info.run_id).exists()
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "emnist-prepared-train"
    assert dataset.digest == baseline["saved"]["data_manifest_sha256"][:16]
    assert {t.key: t.value for t in inputs[0].tags}.get("mlflow.data.context") == "training"


@pytest.mark.slow  # logging and reloading a torch.export program: seconds
def test_logged_model_is_registered_per_experiment_and_matches(prepared, root, store, capsys):
    final = train(make_params(epochs=1, log_model=True))
    assert f"registering it as {EXPERIMENT}-{VARIANT}" in capsys.readouterr().out  # not seconds of silence
    saved = load(final)
    uri = f"runs:/{saved['mlflow_run_id']}/model"
    assert mlflow.models.get_model_info(uri).signature is not None
    logged = mlflow.pytorch.load_model(uri)  # a torch.export (pt2) program: no .eval(), no dropout/BN anyway
    model = build_model(saved["spec"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    x = as_batch_tensor(prepared_data.load_split(prepared, "val")[0][:16], CPU)
    with torch.no_grad():
        torch.testing.assert_close(logged(x), model(x), rtol=0, atol=1e-6)
    # a new version of <experiment>-<variant>, tagged with the model file and data it came from
    versions = store.search_model_versions(f"name = '{EXPERIMENT}-{VARIANT}'")
    assert [v.run_id for v in versions] == [saved["mlflow_run_id"]]
    assert versions[0].tags["model_sha256"] == hashlib.sha256(final.read_bytes()).hexdigest()
    assert versions[0].tags["data.manifest_sha256"] == saved["data_manifest_sha256"]
    assert not (paths.REPO_ROOT / "mlartifacts" / saved["mlflow_run_id"]).exists()


def test_divergence_fails_fast_and_marks_run_failed(root, store, monkeypatch):
    # lr=9.9 does not reliably diverge (the sigmoid output bounds the MSE), so make the loss NaN directly
    mse = torch.nn.functional.mse_loss
    monkeypatch.setattr(torch.nn.functional, "mse_loss", lambda *a, **k: mse(*a, **k) * float("nan"))
    ran = spy_epochs(monkeypatch)
    with pytest.raises(TrainingDiverged, match="epoch 1:"):
        train(make_params())
    assert ran == [0]
    assert not (root / "models" / f"{RUN}.pt").exists()
    assert not (root / "models" / f"{RUN}.best.pt").exists()
    assert not (root / "checkpoints" / f"{RUN}.ckpt").exists()
    runs = store.search_runs([store.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert mlflow.active_run() is None


def test_dvc_experiment_name_is_tagged(root, store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "quick-fox")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    saved = load(train(make_params(epochs=1)))
    tags = store.get_run(saved["mlflow_run_id"]).data.tags
    assert tags["dvc_exp_name"] == "quick-fox"
    assert tags["dvc_exp_baseline_rev"] == "abc123"


# ---------------------------------------------------------------- the stage's command line


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


# ---------------------------------------------------------------- where tracking goes


def test_project_root_strips_dvc_temp_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPRESSNET_ROOT", raising=False)
    checkout = tmp_path / "checkout"
    assert tracking.project_root(checkout / ".dvc" / "tmp" / "exps" / "tmpab12cd") == checkout
    assert tracking.project_root(checkout / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "pipeline") == checkout
    assert tracking.project_root(checkout) == checkout
    assert tracking.project_root(checkout / ".dvc" / "tmp") == checkout / ".dvc" / "tmp"
    assert tracking.project_root() == paths.REPO_ROOT
    monkeypatch.setenv("COMPRESSNET_ROOT", str(checkout / ".dvc" / "tmp" / "exps" / "tmpab12cd"))
    assert tracking.project_root() == checkout  # paths.root() is the default


def test_tracking_uri_and_artifact_location(tmp_path, monkeypatch):
    clean_environment(monkeypatch)
    monkeypatch.delenv("COMPRESSNET_ROOT", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{paths.REPO_ROOT / 'mlflow.db'}"
    assert tracking.tracking_uri().startswith("sqlite:////")  # an absolute path
    assert tracking.artifact_location() == (paths.REPO_ROOT / "mlartifacts").as_uri()

    monkeypatch.setenv("COMPRESSNET_ROOT", str(tmp_path / "project"))  # the store of another project root
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    assert tracking.artifact_location() == (tmp_path / "project" / "mlartifacts").as_uri()
    assert tracking.store_missing(tracking.tracking_uri())

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/elsewhere.db"
    assert tracking.artifact_location() == (tmp_path / "mlartifacts").as_uri()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    assert not tracking.store_missing(tracking.tracking_uri())


def test_experiment_comes_from_the_environment(store, monkeypatch):
    assert tracking.MlflowTracker().experiment == EXPERIMENT
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    tracker = tracking.MlflowTracker()
    assert tracker.experiment == tracking.DEFAULT_EXPERIMENT
    assert store.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id == tracker.experiment_id
    assert tracking.registered_model_name(tracker.experiment, "model01") == f"{tracking.DEFAULT_EXPERIMENT}-model01"


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")]
)
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("fp32", CPU) == "fp32"  # an explicit choice is kept
    assert resolve_precision("bf16", CPU) == "bf16"


def test_determinism_is_on_without_importing_the_compiler():
    """configure_compute turns torch's deterministic algorithms on; in a fresh stage process it does so without
    importing inductor (seconds of every stage's start-up, for a compiler the stages never use)."""
    code = (
        "import sys, torch; from pipeline.lib.device import configure_compute; configure_compute(1); "
        "print(torch.are_deterministic_algorithms_enabled(), 'torch._inductor.config' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False"]
