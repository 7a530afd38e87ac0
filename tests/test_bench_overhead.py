"""benchmarks/bench_overhead.py: every stage timed as DVC runs it, its wall time split into work and overhead."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_overhead

pytestmark = pytest.mark.slow


def test_every_stage_is_timed_and_split_into_work_and_overhead(tmp_path):
    out = tmp_path / "overhead.json"
    assert bench_overhead.main(["--variant", "model01_linear", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["stages"]
    assert [row["stage"] for row in rows] == list(bench_overhead.STAGES)
    for row in rows:
        assert row["wall_s"] > 0 and row["work_s"] >= 0
        assert row["overhead_s"] == pytest.approx(row["wall_s"] - row["work_s"], abs=0.02)
    work = {row["stage"]: row["work_s"] for row in rows}
    assert work["train"] > 0 and work["evaluate"] > 0 and work["report"] > 0  # from the history, metrics, MLflow run
    assert result["import_torch_s"] > 0
