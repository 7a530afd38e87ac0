"""bench_speed's result, written: reports/benchmarks.json and .md, and a `benchmark` run in MLflow (optional: a lent GPU
machine has no MLflow)."""

from __future__ import annotations

import re

import pandas as pd

from pipeline import paths
from pipeline.lib.io import write_json, write_text


def write_outputs(result: dict, log_to_mlflow: bool = True) -> None:
    table = pd.DataFrame(result["rows"])
    markdown = (
        f"# Speed benchmark\n\nfp32 matmul peak {result['matmul_peak_gflops']:.1f} GFLOP/s (the best of "
        f"{len(result['matmul_peak_samples'])} samples spread over the run, the lowest "
        f"{min(result['matmul_peak_samples']):.1f}) on {result['threads']} threads of {result['hardware']} "
        f"({result['device']}, native bf16: "
        f"{result['native_bf16']}); {result['train_steps_timed']} training steps "
        f"timed per row after a warm-up, on {result['data']}.\n\n"
        + table.to_markdown(index=False, floatfmt=".3g")
        + "\n"
    )
    out_json, out_md = paths.reports_dir() / "benchmarks.json", paths.reports_dir() / "benchmarks.md"
    write_json(out_json, result)
    write_text(out_md, markdown)
    print(markdown)
    if log_to_mlflow:
        log_benchmark_run(result, out_json, out_md)


def log_benchmark_run(result: dict, *files) -> None:
    import mlflow  # imported here: with --no-mlflow the benchmark runs where MLflow is not installed

    from pipeline import tracking

    tracking.MlflowTracker()  # the project's store and experiment
    with tracking.tracked_run(run_name="benchmark", tags=tracking.run_tags("benchmark")):
        mlflow.log_metrics(mlflow_metrics(result))
        for path in files:
            mlflow.log_artifact(str(path))


def mlflow_metrics(result: dict) -> dict[str, float]:
    """The result's numbers under names MLflow accepts ("evaluate fp32 channels_last, batch 256" has a comma)."""
    metrics = {"matmul_peak_gflops": result["matmul_peak_gflops"]}
    for row in result["rows"]:
        key = re.sub(r"[^0-9A-Za-z_.-]+", "_", f"{row['variant']}.{row['option']}")
        metrics.update({f"{key}.{k}": v for k, v in row.items() if isinstance(v, float)})
    return metrics
