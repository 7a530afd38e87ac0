"""The pipeline against a real MLflow tracking server over HTTP (sqlite backend, proxied local artifacts):
`dvc exp run` in a copy of the repo, every stage (`python -m pipeline.stages.<stage>`) tracking to the server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import provenance
from scripts.mlflow_server import mlflow_server
from tests.conftest import TINY_SPEC as TINY
from tests.conftest import make_project, run
from tests.fakedata import make_emnist_dir

VARIANTS = {"tiny1": TINY, "tiny2": {**TINY, "latent_dim": 4}}
EXPERIMENT = "server-test"  # MLFLOW_EXPERIMENT_NAME: every stage records into it

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """`mlflow server` on a free 127.0.0.1 port; stopped (its whole process group) when the module ends."""
    store = tmp_path_factory.mktemp("server")
    with mlflow_server(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", store / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def project(tmp_path_factory, server) -> tuple[Path, MlflowClient]:
    """A tiny pipeline (two variants, one seed, models logged) run with MLFLOW_TRACKING_URI=<server>."""
    root, env = make_project(tmp_path_factory.mktemp("project"), VARIANTS, epochs=2)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mlflow"]["log_model"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):  # set in os.environ by in-process MLflow use
        env.pop(name, None)
    env.update(MLFLOW_TRACKING_URI=server, MLFLOW_EXPERIMENT_NAME=EXPERIMENT)
    run(["dvc", "exp", "run", "--set-param", f"data.source={data_dir}"], root, env)
    return root, MlflowClient(tracking_uri=server)


def _runs(client: MlflowClient) -> dict[str, object]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_runs_are_logged_over_http_and_finished(project):
    root, client = project
    runs = _runs(client)
    assert set(runs) == {"classifier", "report", "tiny1-seed0", "tiny2-seed0"}
    # evaluate logged into the training runs after they ended, without reopening them
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert not (root / "mlflow.db").exists(), "stages used the local store instead of the server"
    assert client.get_experiment_by_name(EXPERIMENT).artifact_location.startswith("mlflow-artifacts:")


def test_metrics_have_per_epoch_history_and_test_scores(project):
    _, client = project
    runs = _runs(client)
    for name in ("tiny1-seed0", "tiny2-seed0"):
        history = client.get_metric_history(runs[name].info.run_id, "val_loss")
        assert sorted(m.step for m in history) == [1, 2]
        assert 0 < runs[name].data.metrics["test_ssim"] <= 1
        assert runs[name].data.tags["evaluated"] == "true"
        assert runs[name].data.tags["mlflow.parentRunId"] == runs["report"].info.run_id


def test_artifacts_go_through_the_server(project):
    _, client = project
    runs = _runs(client)
    for name in ("tiny1-seed0", "tiny2-seed0"):
        listed = {a.path for a in client.list_artifacts(runs[name].info.run_id)}
        assert {"history.json", "reconstructions.png", "metrics.json"} <= listed
    assert "report.md" in {a.path for a in client.list_artifacts(runs["report"].info.run_id)}
    local = Path(client.download_artifacts(runs["report"].info.run_id, "report.md"))
    assert "## Findings" in local.read_text()


def test_logged_models_are_stored_by_the_server(project):
    _, client = project
    runs = _runs(client)
    for name in ("tiny1-seed0", "tiny2-seed0"):
        run_id = runs[name].info.run_id
        models = client.search_logged_models(
            experiment_ids=[runs[name].info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        assert len(models) == 1 and models[0].name == "model"


def test_each_variant_is_registered_with_its_run_and_lineage(project):
    root, client = project
    runs = _runs(client)
    lock = provenance.read_lock(root)
    registered = {m.name for m in client.search_registered_models()}
    for variant in VARIANTS:
        assert f"{EXPERIMENT}-{variant}" in registered  # <experiment>-<variant>
        versions = client.search_model_versions(f"name = '{EXPERIMENT}-{variant}'")
        latest = max(versions, key=lambda v: int(v.version))
        assert latest.run_id == runs[f"{variant}-seed0"].info.run_id
        # evaluate tags the version with the train stage's dvc.lock entry, locked once training ended
        train_stage = provenance.stage_name("train", variant, 0)
        assert latest.tags["dvc.train_lock_sha256"] == provenance.entry_digest(lock, train_stage) != provenance.UNKNOWN
