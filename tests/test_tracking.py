"""pipeline.tracking.setup: the experiment it creates or finds is marked as one of training runs."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking


@pytest.fixture
def client(mlflow_store, monkeypatch):
    """A client on a throw-away sqlite store; MLflow's global state is reset afterwards."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # set_experiment exports it: restored (unset) after the test
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    yield MlflowClient(tracking_uri=mlflow_store)
    mlflow.set_tracking_uri(None)


def test_setup_marks_the_experiment_as_custom_model_development(client):
    # the tag MLflow 3's UI reads to open an experiment on its training runs rather than the GenAI overview
    assert (tracking.EXPERIMENT_KIND_TAG, tracking.EXPERIMENT_KIND) == (
        "mlflow.experimentKind",
        "custom_model_development",
    )
    created = tracking.setup("fresh")
    assert client.get_experiment(created).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    assert tracking.setup("fresh") == created  # found again, not recreated

    older = client.create_experiment("made-without-the-tag")
    assert tracking.EXPERIMENT_KIND_TAG not in client.get_experiment(older).tags
    assert tracking.setup("made-without-the-tag") == older
    assert client.get_experiment(older).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND

    chosen = client.create_experiment("chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.setup("chosen")
    assert client.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"  # a user's choice
