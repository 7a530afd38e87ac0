"""benchmarks/bench_speed.py: its rows reach MLflow under names MLflow accepts."""

from __future__ import annotations

import mlflow

from benchmarks import bench_speed


def test_every_row_is_logged_under_a_name_mlflow_accepts(mlflow_store):
    options = ["fp32 channels_last", "evaluate fp32 channels_last, batch 256"]
    rows = [{"variant": "model01", "option": option, "images_per_s": 500.0, "utilisation": 0.7} for option in options]
    metrics = bench_speed.mlflow_metrics({"matmul_peak_gflops": 150.0, "rows": rows})
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged == metrics and len(logged) == 5  # the peak, and two numbers per row, none merged
    assert "model01.evaluate_fp32_channels_last_batch_256.images_per_s" in logged
