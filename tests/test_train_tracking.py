"""The train stage's record: its MLflow run (params, metrics, tags, artifacts, the registered model), where tracking
goes, and the precision and determinism it sets up (tiny autoencoder, throwaway stores)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import torch

from pipeline import paths, tracking
from pipeline.lib import prepared as prepared_data
from pipeline.lib.device import as_batch_tensor, resolve_precision
from pipeline.lib.models import build_model
from pipeline.lib.trainer import TrainingDiverged
from tests.train_support import CPU, EXPERIMENT, RUN, VARIANT, clean_environment, load, make_params, spy_epochs, train

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
