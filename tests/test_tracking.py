"""pipeline.tracking: the experiment setup marks, and data sets logged as a run's input."""

from __future__ import annotations

import json
import warnings

import mlflow
import numpy as np
import pytest
import sqlalchemy
import sqlalchemy.orm
from mlflow.entities import DatasetInput
from mlflow.store.tracking.dbmodels.models import SqlDataset
from mlflow.tracking import MlflowClient

from pipeline import tracking


@pytest.fixture
def client(mlflow_store):
    """A client on a throw-away sqlite store; MLflow's global state is reset afterwards."""
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


def test_a_local_data_set_logs_without_mlflow_warning_that_its_source_is_ambiguous(client, tmp_path):
    images, labels = np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int64)
    with warnings.catch_warnings(record=True) as caught, tracking.MlflowTracker().run("train", tags={}) as run:
        warnings.simplefilter("always")
        run.log_dataset(images, labels, name="prepared", source=str(tmp_path), digest="d1", context="training")
    assert not [w for w in caught if "interpreted in multiple ways" in str(w.message)]
    (logged,) = client.get_run(run.run_id).inputs.dataset_inputs
    assert json.loads(logged.dataset.source) == {"uri": str(tmp_path)}


def test_a_data_set_logged_by_a_concurrent_run_in_between_is_linked_not_lost(client):
    """Parallel train stages log the same data set: MLflow looks it up, then inserts it, so a rival can insert it
    in between. The rival's insert is made to happen exactly there (before the first flush that writes it)."""
    tracker = tracking.MlflowTracker()
    rival_run = client.create_run(tracker.experiment_id).info.run_id
    images, labels = np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int64)
    dataset = mlflow.data.from_numpy(images, targets=labels, name="prepared", source="/data", digest="d1")
    rival_inserted = []

    def rival_inserts_first(session, flush_context, instances):
        if not rival_inserted and any(isinstance(row, SqlDataset) for row in session.new):
            rival_inserted.append(True)
            client.log_inputs(rival_run, [DatasetInput(dataset._to_mlflow_entity())])

    sqlalchemy.event.listen(sqlalchemy.orm.Session, "before_flush", rival_inserts_first)
    try:
        with tracker.run("train", tags={}) as run:
            run.log_dataset(images, labels, name="prepared", source="/data", digest="d1", context="training")
    finally:
        sqlalchemy.event.remove(sqlalchemy.orm.Session, "before_flush", rival_inserts_first)

    assert rival_inserted
    for run_id in (run.run_id, rival_run):
        (logged,) = client.get_run(run_id).inputs.dataset_inputs
        assert (logged.dataset.name, logged.dataset.digest) == ("prepared", "d1")
