"""End to end: the real `dvc exp run` / `dvc repro` on a tiny generated dataset, in a temporary copy of the repo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fakedata import make_emnist_dir

REPO = Path(__file__).resolve().parents[1]
TINY = {"encoder_filters": [4, 8], "encoder_strides": [2, 2], "latent_dim": 8,
        "decoder_filters": [8, 4], "decoder_strides": [2, 2], "latent_activation": "linear"}
REQUIRED_KEYS = {"mse", "psnr", "psnr_pooled", "ssim", "mse_decoder", "psnr_decoder", "ssim_decoder",
                 "max_abs_diff_decoder", "train_loss", "val_loss", "latent_dim", "bytes_per_image_float32",
                 "compression_ratio_float32", "n_test", "seed_protocol", "per_class"}

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """A git+DVC copy of the tracked repo with two tiny variants, after one `dvc exp run` on fake data."""
    root = tmp_path_factory.mktemp("project")
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(epochs=2, batch_size=64)
    params["mlflow"]["log_model"] = False
    params["variants"] = {"tiny1": TINY, "tiny2": {**TINY, "latent_dim": 4}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, root, env)
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
    for run in runs:
        if run.info.run_name != "report":
            assert run.data.tags["mlflow.parentRunId"] == report_run.info.run_id
            assert "test_ssim" in run.data.metrics and "val_loss" in run.data.metrics


def test_editing_one_variant_reruns_only_its_branch(project):
    root, env = project
    assert json.loads(run(["dvc", "status", "--json"], root, env)) == {}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"]["tiny2"]["latent_dim"] = 6
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status", "--json"], root, env)
    assert set(json.loads(status)) == {"train@tiny2"}  # downstream stages follow once its model changes
