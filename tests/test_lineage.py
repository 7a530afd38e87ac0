"""Lineage: DVC hashes in the outputs and MLflow runs, the model registry, and `python -m pipeline.tools.lineage`.

Fast: lineage's checks on a project whose stages ran in-process (prepare, train, classifier, evaluate, tracked in
the project's own <root>/mlflow.db) with a hand-made dvc.lock, one per module; every test that breaks a link does
so in its own copy. Slow: one real `dvc repro` of a tiny variant (model logged and registered): what the stages
record of dvc.lock, the registered model, the clean chain, and that the hand-made lock has the real one's shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.tracking._tracking_service.utils as mlflow_uri
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline import paths, provenance, tracking
from pipeline.lib import prepared
from pipeline.lib.config import DataConfig, load_params, parse_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.io import md5_file, sha256_file
from pipeline.lib.models import build_model
from pipeline.stages.classifier import train_classifier
from pipeline.stages.evaluate import evaluate
from pipeline.stages.prepare import prepare
from pipeline.stages.train import train
from pipeline.tools import lineage, lineage_checks
from tests.conftest import REPO, TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

VARIANT, RUN, MODEL = "tiny", "tiny-seed0", "models/tiny-seed0.pt"
TRAIN, EVALUATE = "train@tiny-0", "evaluate@tiny-0"


@pytest.fixture(autouse=True)
def project_store(monkeypatch):
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


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A project whose stages ran in-process, tracked in <root>/mlflow.db, with a hand-made dvc.lock."""
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
    return Path(shutil.copytree(built, tmp_path / "project", symlinks=True))


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


# ---------------------------------------------------------------- provenance outside DVC


def test_outside_dvc_provenance_is_unknown(tmp_path, monkeypatch):
    inputs, stages = {"prepared": tmp_path / "data" / "prepared"}, {"prepare": "prepare"}
    unknown = {"prepared_md5": "unknown", "prepare_lock_sha256": "unknown"}
    assert provenance.provenance(inputs, stages) == unknown  # no DVC_ROOT: not run by DVC
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert provenance.provenance(inputs, stages) == unknown  # no dvc.lock yet


def test_params_drift_reads_dvcs_yaml_floats_and_names_each_changed_leaf(tmp_path):
    """DVC writes 1e-07 (YAML 1.2); params.yaml has 1.0e-7: the same number, no drift."""
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train@tiny-0:\n    params:\n      params.yaml:\n"
        "        train:\n          adam_eps: 1e-07\n          lr: 0.001\n"
        "        variants.tiny:\n          latent_dim: 8\n"
    )
    lock = provenance.read_lock(tmp_path)
    current = yaml.safe_load("train: {adam_eps: 1.0e-7, lr: 0.002}\nvariants: {tiny: {latent_dim: 8, norm: batch}}\n")
    assert lineage_checks.params_drift(lock, TRAIN, current) == [
        ("train.lr", 0.001, 0.002),
        ("variants.tiny.norm", None, "batch"),
    ]
    assert lineage_checks.params_drift(lock, "evaluate@tiny-0", current) == []  # not locked: nothing to compare


# ---------------------------------------------------------------- the lineage command, in-process project


@pytest.mark.parametrize("target", ["run name", "variant", "model file", "MLflow run id", "root from COMPRESSNET_ROOT"])
def test_clean_chain_passes(built, target, capsys, monkeypatch):
    arg = {
        "run name": RUN,
        "variant": VARIANT,
        "model file": str(built / MODEL),
        "MLflow run id": saved_model(built)["mlflow_run_id"],
    }.get(target, RUN)
    if target == "root from COMPRESSNET_ROOT":
        monkeypatch.setenv("COMPRESSNET_ROOT", str(built))
        assert lineage.main([arg]) == 0
    else:
        assert lineage.main([arg, "--root", str(built)]) == 0
    assert_clean_chain(built, capsys.readouterr().out)


def test_unknown_target_is_an_error(built, capsys):
    assert lineage.main(["no-such-thing", "--root", str(built)]) == 2
    assert "lineage: error: no-such-thing: not a model file, a variant" in capsys.readouterr().err
    assert lineage.main(["model99-seed0", "--root", str(built)]) == 2
    assert capsys.readouterr().err == "lineage: error: model99-seed0: params.yaml has no variant model99\n"


@pytest.mark.parametrize(
    "key, value, expected",
    [
        (
            "variants.tiny.latent_dim",
            4,
            [
                "params edited: variants.tiny.latent_dim: models/tiny-seed0.pt was trained with 8, params.yaml has 4",
                "params edited: variants.tiny.latent_dim: dvc.lock's train@tiny-0 ran with 8, params.yaml has 4",
                "params edited: variants.tiny.latent_dim: dvc.lock's evaluate@tiny-0 ran with 8, params.yaml has 4",
            ],
        ),
        (
            "evaluate.ssim_window",
            "gaussian",
            [
                "params edited: evaluate.ssim_window: dvc.lock's evaluate@tiny-0 ran with 'uniform', "
                "params.yaml has 'gaussian'"
            ],
        ),
        ("seeds", [1], ["params edited: seeds no longer lists 0"]),
    ],
)
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
    assert (
        f"{RUN}: params edited: variants.tiny.norm: {MODEL} was trained with 'none', params.yaml has 'batch'"
        in problems(copy)
    )


def test_changed_data_is_detected(copy, tmp_path):
    before = prepared.manifest_digest(copy / "data" / "prepared")
    other = make_emnist_dir(tmp_path / "other", seed=1)
    prepare_from_directory(DataConfig(source=str(other)), other, copy / "data" / "prepared")
    now = prepared.manifest_digest(copy / "data" / "prepared")
    assert problems(copy) == [
        f"{RUN}: data changed: {where} was made from prepared data with manifest sha256 {before[:12]}, "
        f"data/prepared/manifest.json is now {now[:12]}"
        for where in (MODEL, f"reports/metrics/{RUN}.json")
    ]


def test_replaced_model_file_is_detected(copy):
    shutil.copy(copy / "models" / f"{RUN}.best.pt", copy / MODEL)  # a different file, same run
    found = problems(copy)
    assert kinds(found) == {"model file replaced", "metrics stale"}
    replaced = [line for line in found if "model file replaced" in line]
    assert "its MLflow run recorded" in replaced[0] and "dvc.lock's train@tiny-0 recorded" in replaced[1]
    assert f"reports/metrics/{RUN}.json was computed from a model with sha256" in " ".join(found)


def test_a_model_file_of_another_run_is_detected(copy):
    shutil.copy(copy / MODEL, copy / "models" / "tiny-seed1.pt")  # seed 1's file holds seed 0's model
    edit_params(copy, "seeds", [0, 1])
    assert f"tiny-seed1: model file replaced: models/tiny-seed1.pt holds {RUN}" in problems(copy, "tiny-seed1")


def test_missing_mlflow_run_is_detected(copy):
    run_id = saved_model(copy)["mlflow_run_id"]
    client(copy).delete_run(run_id)
    assert problems(copy) == [
        f"{RUN}: run missing: MLflow run {run_id} of {MODEL} is not in the tracking store "
        f"sqlite:///{copy / 'mlflow.db'}"
    ]


@pytest.mark.parametrize(
    "missing, expected",
    [
        (MODEL, f"model missing: {MODEL} does not exist (dvc repro {TRAIN})"),
        (f"reports/metrics/{RUN}.json", f"metrics stale: reports/metrics/{RUN}.json is missing (dvc repro {EVALUATE})"),
    ],
)
def test_a_missing_output_names_the_stage_to_rerun(copy, missing, expected):
    (copy / missing).unlink()
    assert problems(copy) == [f"{RUN}: {expected}"]


def test_a_missing_model_file_named_as_a_path_names_the_stage_to_rerun(copy, capsys):
    (copy / MODEL).unlink()
    assert lineage.main([MODEL, "--root", str(copy)]) == 1
    assert f"{RUN}: model missing: {MODEL} does not exist (dvc repro {TRAIN})" in capsys.readouterr().out
    for elsewhere in ["models/nothing.pt", f"backup/{RUN}.pt", str(copy.parent / f"{RUN}.pt")]:
        assert lineage.main([elsewhere, "--root", str(copy)]) == 2  # not the run's own file: nothing to check
        assert capsys.readouterr().err == f"lineage: error: {elsewhere}: no such model file\n"


def test_stale_metrics_are_detected(copy, monkeypatch):
    """Retrained outside DVC and not re-evaluated: the metrics describe the old model file."""
    monkeypatch.setenv("COMPRESSNET_ROOT", str(copy))  # the train stage's files and store: the copy's
    params = load_params(copy / "params.yaml")
    train(params, VARIANT, 0, tracking.MlflowTracker())
    found = problems(copy)
    stale = [line for line in found if ": metrics stale: " in line]
    assert f"reports/metrics/{RUN}.json was computed from a model with sha256" in stale[0]
    assert f"reports/metrics/{RUN}.json belongs to MLflow run" in stale[1]
    assert kinds(found) == {"metrics stale", "model file replaced"}  # and DVC locked the old file


# ---------------------------------------------------------------- a real `dvc repro` (slow)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git+DVC copy of the repo with one tiny variant and one seed, after a real `dvc repro`."""
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    root, env = make_project(
        tmp_path_factory.mktemp("project"), {VARIANT: TINY_SPEC}, epochs=1, data_source=str(data_dir)
    )
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mlflow"]["log_model"] = True  # make_project turns it off; the registry is under test here
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "log the model"], root, env)
    run(["dvc", "repro"], root, env)
    return root


@pytest.mark.slow
def test_stages_record_what_dvc_locked_before_them(project):
    lock = provenance.read_lock(project)
    saved = saved_model(project)
    metrics = json.loads((project / "reports" / "metrics" / f"{RUN}.json").read_text())
    model_md5 = hashlib.md5((project / MODEL).read_bytes()).hexdigest()
    assert saved["dvc"] == {
        "prepared_md5": lock["prepare"]["outs"][0]["md5"],
        "prepare_lock_sha256": provenance.entry_digest(lock, "prepare"),
    }
    assert metrics["run"]["dvc"] == {
        **saved["dvc"],
        "model_md5": model_md5,
        "train_lock_sha256": provenance.entry_digest(lock, TRAIN),
    }
    assert provenance.out_md5(lock, MODEL) == model_md5  # what DVC locked is the md5 of the file's bytes
    tags = client(project).get_run(saved["mlflow_run_id"]).data.tags
    assert tags["train.dvc.prepared_md5"] == saved["dvc"]["prepared_md5"]
    assert tags["evaluate.dvc.train_lock_sha256"] == metrics["run"]["dvc"]["train_lock_sha256"]
    assert tags["report.dvc.evaluate_lock_sha256"] == provenance.entry_digest(lock, EVALUATE)
    assert tags["model_sha256"] == tags["evaluate.model_sha256"] == sha256_file(project / MODEL)
    assert tags["data.manifest_sha256"] == saved["data_manifest_sha256"] == metrics["data_manifest_sha256"]


@pytest.mark.slow
def test_registered_version_reproduces_the_model_file(project):
    saved = saved_model(project)
    (version,) = client(project).search_model_versions("name = 'compressnet-tiny'")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    lock = provenance.read_lock(project)
    assert version.run_id == saved["mlflow_run_id"]
    assert version.tags["stage"] == TRAIN and version.tags["seed"] == "0"
    assert version.tags["model_sha256"] == sha256_file(project / MODEL)
    assert version.tags["model_md5"] == provenance.out_md5(lock, MODEL)
    assert version.tags["data.manifest_sha256"] == saved["data_manifest_sha256"]
    assert version.tags["git_commit"] == head
    assert version.tags["dvc.train_lock_sha256"] == provenance.entry_digest(lock, TRAIN)
    model = build_model(saved["spec"])
    model.load_state_dict(saved["state_dict"])
    images = torch.from_numpy(np.load(project / "data" / "prepared" / "test_images.npy")).unsqueeze(1).float() / 255
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")  # project_store puts the process-wide URI back
    registered = mlflow.pytorch.load_model(f"models:/compressnet-tiny/{version.version}")
    with torch.no_grad():
        assert torch.equal(registered(images), model.eval()(images))


@pytest.mark.slow
def test_clean_chain_of_a_dvc_repro_passes_from_the_command_line(project):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "COMPRESSNET_ROOT")}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.lineage", VARIANT], cwd=project, env=env, capture_output=True, text=True
    )  # the checkout it runs in is the one it checks
    assert result.returncode == 0, result.stderr
    assert_clean_chain(project, result.stdout)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert f"git commit {head} (dirty: false)" in result.stdout
    assert "registered as compressnet-tiny version 1" in result.stdout


@pytest.mark.slow
def test_hand_made_lock_has_the_shape_of_dvcs(project):
    """What the fast tests' hand-made dvc.lock holds is what `dvc repro` wrote."""
    real, hand_made = provenance.read_lock(project), hand_made_lock(project)
    for stage, entry in hand_made.items():
        assert real[stage]["params"] == entry["params"], stage
        for out in entry["outs"]:
            if not out["md5"].endswith(".dir"):  # a directory's md5 is DVC's own; nothing compares it to files
                assert provenance.out_md5(real, out["path"]) == out["md5"], out["path"]
