"""benchmarks/bench_share.py, the GPU-sharing benchmark, run on the CPU at a few steps: every figure it is asked for
is measured and written beside what the file already held (a GPU machine runs it for real)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import threading

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


STOPPED = 3  # the exit code of a run whose wait at the start was aborted


def fail_before_the_start(start) -> None:
    sys.exit("this run failed before the start")


def wait_at_the_start(start) -> None:
    """A run that reached the start: without a timeout, only the barrier's abort ends its wait."""
    try:
        start.wait()
    except threading.BrokenBarrierError:
        sys.exit(STOPPED)


def test_a_run_that_fails_before_the_start_stops_the_runs_waiting_there():
    context = multiprocessing.get_context("fork")  # join_all is the same for spawned runs; forked ones start faster
    start = context.Barrier(3)
    processes = [context.Process(target=fail_before_the_start, args=(start,))]
    processes += [context.Process(target=wait_at_the_start, args=(start,)) for _ in range(2)]
    for process in processes:
        process.start()
    bench_share.join_all(processes, start)
    assert [process.exitcode for process in processes] == [1, STOPPED, STOPPED]


def test_a_run_whose_start_was_aborted_stops_with_one_line_and_no_result():
    start, results = threading.Barrier(2), {}
    start.abort()
    args = argparse.Namespace(variant="model01", device="cpu", threads=1, steps=1, warmup=1)
    with pytest.raises(SystemExit, match="^bench_share: run 0 stopped: another run failed"):
        bench_share.worker(args, start, results, 0)
    assert results == {}
