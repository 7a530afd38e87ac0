"""End to end: the real `dvc exp run` / `dvc repro` on a tiny generated dataset, in a temporary copy of the repo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY_SPEC as TINY, make_project, run
from tests.fakedata import make_emnist_dir

REQUIRED_KEYS = {"mse", "psnr", "psnr_pooled", "ssim", "mse_decoder", "psnr_decoder", "ssim_decoder",
                 "max_abs_diff_decoder", "train_loss", "val_loss", "latent_dim", "bytes_per_image_float32",
                 "compression_ratio_float32", "n_test", "seed_protocol", "per_class"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """A git+DVC copy of the repo with two tiny variants, after one `dvc exp run` on generated data."""
    root, env = make_project(tmp_path_factory.mktemp("project"), {"tiny1": TINY, "tiny2": {**TINY, "latent_dim": 4}})
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    run(["dvc", "exp", "run", "--set-param", f"data.source={data_dir}"], root, env)
    return root, env


def test_pipeline_produces_every_output(project):
    root, _ = project
    for variant in ("tiny1", "tiny2"):
        assert (root / "models" / f"{variant}.pt").exists()
        metrics = json.loads((root / "reports" / "metrics" / f"{variant}.json").read_text())
        assert REQUIRED_KEYS <= metrics.keys()
        assert len(metrics["per_class"]) == 47
        assert metrics["max_abs_diff_decoder"] < 1e-6
        assert metrics["n_test"] == 94
    report = (root / "reports" / "report.md").read_text()
    assert "tiny1" in report and "tiny2" in report
    assert len(list((root / "reports" / "figures").glob("*.png"))) == 4


def test_data_source_is_a_dvc_parameter(project):
    root, _ = project
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    source = lock["stages"]["prepare"]["params"]["params.yaml"]["data"]["source"]
    assert source.endswith("emnist") and Path(source).is_absolute()


def test_runs_land_in_the_root_sqlite_store(project):
    root, env = project
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("compressnet")
    runs = client.search_runs([experiment.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == ["report", "tiny1", "tiny2"]
    report_run = next(r for r in runs if r.info.run_name == "report")
    for variant_run in runs:
        if variant_run.info.run_name != "report":
            assert variant_run.data.tags["mlflow.parentRunId"] == report_run.info.run_id
            assert {"test_ssim", "val_loss"} <= variant_run.data.metrics.keys()


def _snapshot(root: Path) -> dict:
    """State-dict tensors and metrics (without the documented non-deterministic 'run' block) per variant."""
    snap = {}
    for variant in ("tiny1", "tiny2"):
        saved = torch.load(root / "models" / f"{variant}.pt", weights_only=False)
        metrics = json.loads((root / "reports" / "metrics" / f"{variant}.json").read_text())
        metrics.pop("run")
        snap[variant] = (saved["state_dict"], metrics)
    return snap


def test_forced_rerun_is_bit_identical(project):
    root, env = project
    before = _snapshot(root)
    run(["dvc", "repro", "--force"], root, env)
    after = _snapshot(root)
    for variant, (weights, metrics) in before.items():
        new_weights, new_metrics = after[variant]
        assert weights.keys() == new_weights.keys()
        assert all(torch.equal(weights[k], new_weights[k]) for k in weights), variant
        assert metrics == new_metrics, variant


def test_editing_one_variant_reruns_only_its_branch(project):
    root, env = project
    assert json.loads(run(["dvc", "status", "--json"], root, env)) == {}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"]["tiny2"]["latent_dim"] = 6
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status", "--json"], root, env)
    assert set(json.loads(status)) == {"train@tiny2"}  # downstream stages follow once its model changes
