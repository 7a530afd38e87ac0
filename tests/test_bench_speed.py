"""benchmarks/bench_speed.py and speed_report.py: rows reach MLflow under names MLflow accepts (or only the files,
without MLflow); the ceiling and utilisation."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest
import torch
import yaml
from torch._inductor.exc import CppCompileError

from benchmarks import bench_speed, speed_report
from pipeline.lib.config import parse_params
from tests.conftest import TINY_SPEC


def test_every_row_is_logged_under_a_name_mlflow_accepts(mlflow_store):
    options = ["fp32 channels_last", "evaluate fp32 channels_last, batch 256"]
    rows = [{"variant": "model01", "option": option, "images_per_s": 500.0, "utilisation": 0.7} for option in options]
    metrics = speed_report.mlflow_metrics({"matmul_peak_gflops": 150.0, "rows": rows})
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged == metrics and len(logged) == 5  # the peak, and two numbers per row, none merged
    assert "model01.evaluate_fp32_channels_last_batch_256.images_per_s" in logged


def tiny_params():
    return parse_params({"train": {"batch_size": 4, "threads": 1}, "variants": {"plain": TINY_SPEC}})


def test_layers_alone_times_every_conv_and_dense_layer_on_the_activations_it_is_fed(monkeypatch):
    """The ceiling: each conv and dense layer once, on what the model feeds it, the first without an input
    gradient (a forward hook that returned something would have replaced the model's activations on the way)."""
    timed_layers = []

    def one_second(layer, x, input_grad, repeats):
        timed_layers.append((type(layer).__name__, tuple(x.shape), input_grad))
        return 1.0

    monkeypatch.setattr(bench_speed, "_best_forward_backward", one_second)
    rate = bench_speed.layers_alone_rate(tiny_params(), "plain", torch.device("cpu"))
    # TINY_SPEC: 2 convs (28 -> 14 -> 7), the dense latent and back, 2 transposed convs to 8 and 4 channels, 1 last
    names = [name for name, _, _ in timed_layers]
    assert names == ["SameConv2d", "SameConv2d", "Linear", "Linear"] + ["SameConvTranspose2d"] * 3
    assert [shape for _, shape, _ in timed_layers] == [
        (4, 1, 28, 28), (4, 4, 14, 14), (4, 8 * 7 * 7), (4, 8), (4, 8, 7, 7), (4, 8, 14, 14), (4, 4, 28, 28)
    ]  # fmt: skip
    assert [grad for _, _, grad in timed_layers] == [False] + [True] * 6
    assert rate == {"images_per_s": 4 / 7}


def test_utilisation_is_against_the_run_s_best_peak_sample():
    training = {"variant": "m", "option": "fp32 NCHW", "gflops_per_s": 60.0}
    evaluation = {"variant": "m", "option": "evaluate", "gflops_per_s": 30.0, "eval_mflop_per_image": 200.0}
    assert bench_speed.with_utilisation(training, 120.0) == {**training, "utilisation": 0.5}
    assert bench_speed.with_utilisation(evaluation, 120.0) == {
        **evaluation,
        "utilisation": 0.25,
        "seconds_for_18800_at_peak": 18_800 * 200e6 / 120e9,
    }


def test_a_row_that_fails_to_compile_is_reported_and_the_others_still_fail_loudly(monkeypatch):
    def no_compiler(params, variant, option, train_x, steps):
        raise CppCompileError(["g++", "kernel.cpp"], "g++: command not found")

    monkeypatch.setattr(bench_speed, "training_rate", no_compiler)
    compiled = bench_speed.row(None, "m", "fp32 channels_last, torch.compile", torch.zeros(1), 1, 1)
    assert compiled == {
        "variant": "m",
        "option": "fp32 channels_last, torch.compile",
        "error": "CppCompileError: C++ compile error",
    }
    assert bench_speed.with_utilisation(compiled, 120.0) == compiled
    with pytest.raises(CppCompileError):  # an uncompiled row that fails is a failure of the benchmark
        bench_speed.row(None, "m", "fp32 channels_last", torch.zeros(1), 1, 1)

    def out_of_memory(params, variant, option, train_x, steps):
        raise MemoryError("not a compiler's failure")

    monkeypatch.setattr(bench_speed, "training_rate", out_of_memory)
    with pytest.raises(MemoryError):
        bench_speed.row(None, "m", "fp32 channels_last, torch.compile", torch.zeros(1), 1, 1)


def test_a_fresh_clone_is_measured_on_random_images_and_every_row_is_written(project_root, mlflow_store, monkeypatch):
    """make bench before any pipeline run: no prepared data, so random images of the same shape."""
    params = {"train": {"batch_size": 4, "threads": 1}, "variants": {"plain": TINY_SPEC}, "matrix": ["plain"]}
    (project_root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(bench_speed, "matmul_peak_gflops", lambda device: 100.0)  # 2048² products: a second each
    options = [bench_speed.DEFAULT_ALLOCATOR, "fp32 NCHW", bench_speed.LAYERS_ALONE]
    result = bench_speed.run(["plain"], options, steps=2, eval_images=8)
    speed_report.write_outputs(result)

    assert result["data"] == "random images (no prepared data)"
    evaluate = [f"evaluate fp32 channels_last, batch {batch}" for batch in (256, 128, 2048)]  # params' first
    assert [row["option"] for row in result["rows"]] == [*options, *evaluate]
    for row in result["rows"]:
        assert row["images_per_s"] > 0 and row["utilisation"] == pytest.approx(row["gflops_per_s"] / 100.0)
    counted = [row["page_faults_per_step"] for row in result["rows"][:2]] + [
        row["page_faults_per_image"] for row in result["rows"][3:]
    ]  # a count for every training option and every evaluation row, whatever the machine makes of it
    assert len(counted) == 5 and all(isinstance(n, (int, float)) and n >= 0 for n in counted)
    assert json.loads((project_root / "reports" / "benchmarks.json").read_text())["rows"] == result["rows"]
    assert "batch 2048" in (project_root / "reports" / "benchmarks.md").read_text()
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.metrics["plain.fp32_NCHW.images_per_s"] == result["rows"][1]["images_per_s"]


def test_without_mlflow_the_benchmarks_import_and_no_mlflow_writes_the_files(project_root, monkeypatch):
    """A lent GPU machine has torch and pandas but not MLflow: bench_speed and bench_share must import there, and
    --no-mlflow must write the result files without reaching for MLflow."""
    blocked = "import sys; sys.modules['mlflow'] = None; import benchmarks.bench_speed, benchmarks.bench_share"
    subprocess.run([sys.executable, "-c", blocked], check=True, cwd=bench_speed.paths.REPO_ROOT)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError from here on
    rows = [{"variant": "plain", "option": "fp32 NCHW", "images_per_s": 500.0}]
    result = {"matmul_peak_gflops": 100.0, "matmul_peak_samples": [100.0], "threads": 1, "hardware": "cpu"}
    result |= {"device": "cpu", "native_bf16": False, "train_steps_timed": 2, "data": "random images", "rows": rows}
    speed_report.write_outputs(result, log_to_mlflow=False)
    assert json.loads((project_root / "reports" / "benchmarks.json").read_text()) == result
    with pytest.raises(ImportError):
        speed_report.write_outputs(result)  # the default still logs, so it needs MLflow
