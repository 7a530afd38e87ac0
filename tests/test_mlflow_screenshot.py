"""scripts.mlflow_screenshot's choices before it starts a server: which runs it compares, and a missing browser."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from scripts import mlflow_screenshot


def test_the_latest_finished_run_of_each_name_is_compared(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("compressnet")
    ids = {}
    for name, mse, start in [("a", 0.9, 1), ("a", 0.004, 2), ("b", 0.005, 1)]:  # a retrained, later
        run = client.create_run(experiment, start_time=start, run_name=name)
        client.log_metric(run.info.run_id, "test_mse", mse)
        client.set_terminated(run.info.run_id)
        ids[name, start] = run.info.run_id
    _, picked = mlflow_screenshot.pick_runs(client, "compressnet", ["a", "b"])
    assert [r.info.run_id for r in picked] == [ids["a", 2], ids["b", 1]]


def test_a_missing_browser_is_refused_before_anything_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        mlflow_screenshot.parse_args(["--chromium", str(tmp_path / "no-chromium")])
    assert exit_.value.code == 2 and "no Chromium at" in capsys.readouterr().err
