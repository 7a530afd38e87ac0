"""benchmarks/bench_overhead.py: every stage timed as DVC runs it, its wall time split into work and overhead."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks import bench_overhead
from pipeline.tools import warm_stages


@pytest.fixture
def quick_stages(tmp_path, monkeypatch) -> Path:
    """Each version's project a folder with one file and every stage a second, so that a run is quick; returns
    where tempfile makes the benchmark's temporary folder."""
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))

    def project(base, rev, variant, data):
        base.mkdir()
        (base / "params.yaml").write_text(f"variant: {variant}\n")
        return base, {}

    monkeypatch.setattr(bench_overhead, "project", project)
    monkeypatch.setattr(bench_overhead, "run_stage", lambda root, env, stage, variant, forked: 1.0)
    monkeypatch.setattr(bench_overhead, "forkserver_start", lambda root, env: 2.0)
    monkeypatch.setattr(bench_overhead, "recorded_work", lambda root, stage, variant: 0.25)
    monkeypatch.setattr(bench_overhead, "import_floor", lambda env: 0.5)
    monkeypatch.setattr(warm_stages, "NVIDIA_DRIVER", str(tmp_path / "no-such-device"))  # forked stages measured too
    monkeypatch.delenv(warm_stages.FRESH_ENV, raising=False)
    return temp_root


def test_the_temporary_projects_are_removed_after_a_run(quick_stages, tmp_path):
    out = tmp_path / "overhead.json"
    assert bench_overhead.main(["--before", "HEAD", "--out", str(out)]) == 0
    stages = json.loads(out.read_text())["stages"]
    assert len(stages) == 3 * len(bench_overhead.STAGES) and stages[0]["overhead_s"] == 0.75
    assert list(quick_stages.iterdir()) == []


def test_the_temporary_projects_are_removed_when_a_stage_fails(quick_stages, tmp_path, monkeypatch):
    def fail_at_train(root, env, stage, variant, forked):
        if stage == "train":
            sys.exit(f"bench_overhead: {stage} failed ({root.name} version)")
        return 1.0

    monkeypatch.setattr(bench_overhead, "run_stage", fail_at_train)
    with pytest.raises(SystemExit, match="train failed"):
        bench_overhead.main(["--out", str(tmp_path / "overhead.json")])
    assert list(quick_stages.iterdir()) == []
    assert not (tmp_path / "overhead.json").exists()


@pytest.mark.slow
def test_every_stage_is_timed_and_split_into_work_and_overhead(tmp_path):
    out = tmp_path / "overhead.json"
    assert bench_overhead.main(["--variant", "model01_linear", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["stages"]
    assert [(row["stage"], row["version"]) for row in rows] == [
        (stage, version) for stage in bench_overhead.STAGES for version in ("after", bench_overhead.FORKED)
    ]
    for row in rows:
        assert row["wall_s"] > 0 and row["work_s"] >= 0
        assert row["overhead_s"] == pytest.approx(row["wall_s"] - row["work_s"], abs=0.02)
    for version in ("after", bench_overhead.FORKED):
        work = {row["stage"]: row["work_s"] for row in rows if row["version"] == version}
        assert work["train"] > 0 and work["evaluate"] > 0 and work["report"] > 0  # history, metrics, MLflow run
    assert result["import_torch_s"] > 0 and result["forkserver_start_s"] > 0
