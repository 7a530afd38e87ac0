"""Lineage after one real `dvc repro` of a tiny variant (model logged and registered), all slow: what the stages
record of dvc.lock, the registered model, the clean chain from the command line, and that the fast tests'
hand-made lock has the real one's shape."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from pipeline import provenance
from pipeline.lib.io import sha256_file
from pipeline.lib.models import build_model
from tests.conftest import TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir
from tests.lineage_support import (
    EVALUATE,
    MODEL,
    RUN,
    TRAIN,
    VARIANT,
    assert_clean_chain,
    client,
    hand_made_lock,
    saved_model,
)

pytestmark = pytest.mark.usefixtures("isolated_store")


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
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")  # isolated_store puts the process-wide URI back
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
