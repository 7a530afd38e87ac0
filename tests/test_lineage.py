"""Lineage: DVC hashes in the outputs and MLflow runs, the model registry, and `python -m pipeline.lineage`.

One real `dvc repro` of a tiny variant (module fixture, with the model logged and registered); every test that
breaks a link does so in its own copy of that project.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline import data, dvclock, lineage
from pipeline.config import DataConfig, load_params
from pipeline.models import build_model
from pipeline.prepare import prepare
from pipeline.train import train_variant
from tests.conftest import TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

VARIANT, RUN, MODEL = "tiny", "tiny-seed0", "models/tiny-seed0.pt"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git+DVC copy of the repo with one tiny variant and one seed, after a real `dvc repro`."""
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    root, env = make_project(tmp_path_factory.mktemp("project"), {VARIANT: TINY_SPEC}, epochs=1,
                             data_source=str(data_dir))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mlflow"]["log_model"] = True  # make_project turns it off; the registry is under test here
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "log the model"], root, env)
    run(["dvc", "repro"], root, env)
    return root


@pytest.fixture(autouse=True)
def project_store(monkeypatch):
    """Lineage reads the store of the project it checks (<root>/mlflow.db), as in a user's checkout."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)


@pytest.fixture
def copy(project, tmp_path) -> Path:
    """A private copy of the project, store included, for a test to break."""
    return Path(shutil.copytree(project, tmp_path / "project", symlinks=True))


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def saved_model(root: Path) -> dict:
    return torch.load(root / MODEL, map_location="cpu", weights_only=False)


def problems(root: Path, target: str = RUN) -> list[str]:
    return lineage.lineage(target, root)[1]


def kinds(lines: list[str]) -> set[str]:
    """'tiny-seed0: data changed: ...' -> 'data changed'."""
    return {line.split(": ")[1] for line in lines}


def edit_params(root: Path, key: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    *path, last = key.split(".")
    section = params
    for part in path:
        section = section[part]
    section[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# ---------------------------------------------------------------- provenance recorded by the stages

def test_stages_record_what_dvc_locked_before_them(project):
    lock = dvclock.read_lock(project)
    saved = saved_model(project)
    metrics = json.loads((project / "reports" / "metrics" / f"{RUN}.json").read_text())
    model_md5 = hashlib.md5((project / MODEL).read_bytes()).hexdigest()
    assert saved["dvc"] == {"prepared_md5": lock["prepare"]["outs"][0]["md5"],
                            "prepare_lock_sha256": dvclock.entry_digest(lock, "prepare")}
    assert metrics["run"]["dvc"] == {**saved["dvc"], "model_md5": model_md5,
                                     "train_lock_sha256": dvclock.entry_digest(lock, "train@tiny-0")}
    assert dvclock.out_md5(lock, MODEL) == model_md5  # what DVC locked is the md5 of the file's bytes
    tags = client(project).get_run(saved["mlflow_run_id"]).data.tags
    assert tags["train.dvc.prepared_md5"] == saved["dvc"]["prepared_md5"]
    assert tags["evaluate.dvc.train_lock_sha256"] == metrics["run"]["dvc"]["train_lock_sha256"]
    assert tags["report.dvc.evaluate_lock_sha256"] == dvclock.entry_digest(lock, "evaluate@tiny-0")
    assert tags["model_sha256"] == tags["evaluate.model_sha256"] == data.sha256_file(project / MODEL)
    assert tags["data.manifest_sha256"] == saved["data_manifest_sha256"] == metrics["data_manifest_sha256"]


def test_outside_dvc_provenance_is_unknown(tmp_path, monkeypatch):
    inputs, stages = {"prepared": tmp_path / "data" / "prepared"}, {"prepare": "prepare"}
    unknown = {"prepared_md5": "unknown", "prepare_lock_sha256": "unknown"}
    assert dvclock.provenance(inputs, stages) == unknown  # no DVC_ROOT: not run by DVC
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert dvclock.provenance(inputs, stages) == unknown  # no dvc.lock yet


def test_registered_version_reproduces_the_model_file(project):
    saved = saved_model(project)
    (version,) = client(project).search_model_versions("name = 'compressnet-tiny'")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert version.run_id == saved["mlflow_run_id"]
    assert version.tags["stage"] == "train@tiny-0" and version.tags["seed"] == "0"
    assert version.tags["model_sha256"] == data.sha256_file(project / MODEL)
    assert version.tags["model_md5"] == dvclock.out_md5(dvclock.read_lock(project), MODEL)
    assert version.tags["data.manifest_sha256"] == saved["data_manifest_sha256"]
    assert version.tags["git_commit"] == head
    assert version.tags["dvc.train_lock_sha256"] == dvclock.entry_digest(dvclock.read_lock(project), "train@tiny-0")
    model = build_model(saved["spec"])
    model.load_state_dict(saved["state_dict"])
    images = torch.from_numpy(np.load(project / "data" / "prepared" / "test_images.npy")).unsqueeze(1).float() / 255
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        registered = mlflow.pytorch.load_model(f"models:/compressnet-tiny/{version.version}")
    finally:
        mlflow.set_tracking_uri(None)
    with torch.no_grad():
        assert torch.equal(registered(images), model.eval()(images))


# ---------------------------------------------------------------- the lineage command

@pytest.mark.parametrize("target", ["run name", "variant", "model file", "MLflow run id"])
def test_clean_chain_passes(project, target, capsys):
    saved = saved_model(project)
    arg = {"run name": RUN, "variant": VARIANT, "model file": str(project / MODEL),
           "MLflow run id": saved["mlflow_run_id"]}[target]
    assert lineage.main([arg, "--root", str(project)]) == 0
    out = capsys.readouterr().out
    manifest = data.load_manifest(project / "data" / "prepared")
    tags = client(project).get_run(saved["mlflow_run_id"]).data.tags
    for link in [*manifest["inputs"].values(), saved["data_manifest_sha256"], tags["git_commit"], "latent_dim=8",
                 data.sha256_file(project / MODEL), "registered as compressnet-tiny version 1", "mse 0."]:
        assert link in out
    assert out.endswith("lineage: every link matches\n")


def test_unknown_target_is_an_error(project, capsys):
    assert lineage.main(["no-such-thing", "--root", str(project)]) == 2
    assert "no-such-thing: not a model file, a variant" in capsys.readouterr().err


@pytest.mark.parametrize("key, value, expected", [
    ("variants.tiny.latent_dim", 4, [
        "params edited: variants.tiny.latent_dim: models/tiny-seed0.pt was trained with 8, params.yaml has 4",
        "params edited: variants.tiny.latent_dim: dvc.lock's train@tiny-0 ran with 8, params.yaml has 4"]),
    ("evaluate.ssim_window", "gaussian", [
        "params edited: evaluate.ssim_window: dvc.lock's evaluate@tiny-0 ran with 'uniform', "
        "params.yaml has 'gaussian'"]),
])
def test_edited_params_are_detected(copy, key, value, expected, capsys):
    edit_params(copy, key, value)
    assert problems(copy) == [f"{RUN}: {line}" for line in expected]
    assert lineage.main([RUN, "--root", str(copy)]) == 1
    assert capsys.readouterr().out.endswith("".join(f"{RUN}: {line}\n" for line in expected))


def test_a_key_newer_than_the_model_counts_as_its_default(copy):
    saved = torch.load(copy / MODEL, map_location="cpu", weights_only=False)
    del saved["spec"]["norm"], saved["train"]["loss"]  # as written before those keys existed
    torch.save(saved, copy / MODEL)
    assert not [line for line in problems(copy) if "params edited" in line]
    edit_params(copy, "variants.tiny.norm", "batch")  # a real edit of the new key is still caught
    assert f"{RUN}: params edited: variants.tiny.norm: {MODEL} was trained with 'none', params.yaml has 'batch'" \
        in problems(copy)


def test_changed_data_is_detected(copy, tmp_path):
    before = data.manifest_digest(copy / "data" / "prepared")
    other = make_emnist_dir(tmp_path / "other", seed=1)
    prepare(DataConfig(**{**dataclasses.asdict(load_params(copy / "params.yaml").data), "source": str(other)}),
            copy / "data" / "prepared")
    now = data.manifest_digest(copy / "data" / "prepared")
    assert problems(copy) == [
        f"{RUN}: data changed: {where} was made from prepared data with manifest sha256 {before[:12]}, "
        f"data/prepared/manifest.json is now {now[:12]}" for where in (MODEL, f"reports/metrics/{RUN}.json")]


def test_replaced_model_file_is_detected(copy):
    shutil.copy(copy / "models" / f"{RUN}.best.pt", copy / MODEL)  # a different file, same run
    found = problems(copy)
    assert kinds(found) == {"model file replaced", "metrics stale"}
    replaced = [line for line in found if "model file replaced" in line]
    assert "its MLflow run recorded" in replaced[0] and "dvc.lock's train@tiny-0 recorded" in replaced[1]
    assert f"reports/metrics/{RUN}.json was computed from a model with sha256" in " ".join(found)


def test_missing_mlflow_run_is_detected(copy):
    run_id = saved_model(copy)["mlflow_run_id"]
    client(copy).delete_run(run_id)
    assert problems(copy) == [f"{RUN}: run missing: MLflow run {run_id} of {MODEL} is not in the tracking store "
                              f"sqlite:///{copy / 'mlflow.db'}"]


def test_stale_metrics_are_detected(copy, monkeypatch):
    """Retrained outside DVC and not re-evaluated: the metrics describe the old model file."""
    params = load_params(copy / "params.yaml")
    params = dataclasses.replace(params, mlflow=dataclasses.replace(params.mlflow, log_model=False))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    try:
        train_variant(params, VARIANT, 0, prepared=copy / "data" / "prepared", models_dir=copy / "models",
                      history_dir=copy / "reports" / "history", checkpoint_dir=copy / "checkpoints")
    finally:
        mlflow.set_tracking_uri(None)
    found = problems(copy)
    stale = [line for line in found if ": metrics stale: " in line]
    assert f"reports/metrics/{RUN}.json was computed from a model with sha256" in stale[0]
    assert f"reports/metrics/{RUN}.json belongs to MLflow run" in stale[1]
    assert kinds(found) == {"metrics stale", "model file replaced"}  # and DVC locked the old file
