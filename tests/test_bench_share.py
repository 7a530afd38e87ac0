"""benchmarks/bench_share.py, the GPU-sharing benchmark, run on the CPU at a few steps: every figure it is asked for
is measured and written beside what the file already held (a GPU machine runs it for real)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_share

pytestmark = pytest.mark.slow


def test_the_benchmark_measures_every_count_and_keeps_the_files_other_figures(tmp_path):
    out = tmp_path / "benchmarks_matrix.json"
    out.write_text(json.dumps({"speedup": 1.5}))
    args = ["--device", "cpu", "--steps", "2", "--warmup", "1", "--concurrent", "1", "2", "--seed-batch", "2"]
    assert bench_share.main([*args, "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["speedup"] == 1.5
    sharing = written["device_sharing"]
    assert set(sharing["images_per_s_concurrent_runs"]) == {"1", "2"}
    assert set(sharing["images_per_s_seeds_batched"]) == {"2"}
    assert all(v > 0 for v in sharing["images_per_s_concurrent_runs"].values())
    assert sharing["images_per_s_seeds_batched"]["2"] > 0
