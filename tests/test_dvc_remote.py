"""The project under DVC as a user sees it: every run's metrics in the experiment table, a metrics diff between
commits that covers only the changed run, and the outputs' round trip through a remote to a fresh clone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_SPEC as TINY
from tests.conftest import make_project, run
from tests.fakedata import make_emnist_dir

RUNS = ["tiny1-seed0", "tiny2-seed0"]
KEY_METRICS = {"mse", "psnr", "ssim"}

pytestmark = pytest.mark.slow


def _commit(root: Path, env: dict, message: str) -> None:
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", message], root, env)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """Two tiny variants x one seed after `dvc repro` (1 epoch), committed: dvc.lock, params and reports in git."""
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    root, env = make_project(
        tmp_path_factory.mktemp("project"),
        {"tiny1": TINY, "tiny2": {**TINY, "latent_dim": 4}},
        epochs=1,
        data_source=str(data_dir),
    )
    run(["dvc", "repro"], root, env)
    _commit(root, env, "first pipeline run")
    return root, env


@pytest.fixture(scope="module")
def changed(project) -> tuple[Path, dict]:
    """The project after a second commit: tiny2's latent_dim 4 -> 6, reproduced."""
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"]["tiny2"]["latent_dim"] = 6
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], root, env)
    _commit(root, env, "tiny2: latent_dim 6")
    return root, env


@pytest.fixture(scope="module")
def clone(changed, tmp_path_factory) -> tuple[Path, dict, Path]:
    """A fresh `git clone` of the project with its DVC outputs pulled from a local remote it was pushed to."""
    root, env = changed
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path_factory.mktemp("remote"))], root, env)
    _commit(root, env, "a local DVC remote")
    run(["dvc", "push"], root, env)
    copy = tmp_path_factory.mktemp("clone") / "project"
    run(["git", "clone", "-q", str(root), str(copy)], copy.parent, env)
    run(["dvc", "pull"], copy, env)
    return copy, env, root


def test_exp_show_lists_every_runs_key_metrics(project):
    root, env = project
    rows = json.loads(run(["dvc", "exp", "show", "--json"], root, env))
    workspace = next(row for row in rows if row["rev"] == "workspace")
    metrics = workspace["data"]["metrics"]
    for name in RUNS:
        assert KEY_METRICS <= metrics[f"reports/metrics/{name}.json"]["data"].keys()


def test_metrics_diff_between_commits_covers_only_the_changed_run(changed):
    root, env = changed
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"], root, env))
    assert set(diff) == {"reports/metrics/tiny2-seed0.json"}
    changes = diff["reports/metrics/tiny2-seed0.json"]
    assert changes["latent_dim"] == {"old": 4, "new": 6, "diff": 2}
    assert KEY_METRICS <= changes.keys()


def test_fresh_clone_pulls_outputs_from_the_remote(clone):
    copy, env, origin = clone
    for name in RUNS:
        for suffix in (".pt", ".best.pt"):
            model = f"models/{name}{suffix}"
            assert (copy / model).read_bytes() == (origin / model).read_bytes(), model
    assert (copy / "data" / "prepared" / "manifest.json").exists()
    assert json.loads(run(["dvc", "status", "--json"], copy, env)) == {}


def test_repro_in_the_clone_runs_nothing(clone):
    copy, env, _ = clone
    before = {p: p.stat().st_mtime_ns for p in (copy / "models").iterdir()}
    output = run(["dvc", "repro"], copy, env)
    assert "Data and pipelines are up to date." in output
    assert "Running stage" not in output
    assert {p: p.stat().st_mtime_ns for p in (copy / "models").iterdir()} == before
    assert not (copy / "mlflow.db").exists(), "a stage ran and logged to MLflow"
    assert run(["git", "status", "--porcelain"], copy, env) == ""
