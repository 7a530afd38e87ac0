"""The baselines stage's work one step after another in one process, and with its codecs in worker processes
beside PCA, side by side in one run.

    python -m benchmarks.bench_baselines                      # the prepared splits of this project (data/prepared)
    python -m benchmarks.bench_baselines --prepared DIR --repeats 3

Times pipeline.lib.baselines.compute_baselines on the prepared train and test splits with the default params'
rate_distortion settings, `workers=0` (everything in this process, as the stage ran before) and the default (as
many codec processes as torch has threads), interleaved `--repeats` times so that both see the same machine load,
and checks that both give the same rows. Writes reports/benchmarks_baselines.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.arguments import positive
from pipeline import paths
from pipeline.cli import load_params
from pipeline.lib import prepared
from pipeline.lib.baselines import compute_baselines
from pipeline.lib.io import DataError, write_json


def timed_rows(params, train, test, workers: int | None) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    rows = compute_baselines(params.rate_distortion, params.evaluate.ssim_window, train, test, False, workers)
    return time.perf_counter() - started, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_baselines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prepared", type=Path, help="a prepared data directory (default: this project's)")
    parser.add_argument("--repeats", type=positive, default=2)
    parser.add_argument("--out", type=Path, help="default: reports/benchmarks_baselines.json")
    args = parser.parse_args(argv)
    data_dir = args.prepared or paths.prepared_dir()
    params = load_params(paths.params_file())
    try:
        train, test = prepared.load_split(data_dir, "train")[0], prepared.load_split(data_dir, "test")[0]
    except DataError as err:
        raise SystemExit(f"bench_baselines: {err}") from None
    versions = {"in this process": 0, f"{torch.get_num_threads()} codec processes": None}
    seconds, rows = {name: [] for name in versions}, {}
    for repeat in range(args.repeats):
        for name, workers in versions.items():
            took, rows[name] = timed_rows(params, train, test, workers)
            seconds[name].append(round(took, 2))
            print(f"repeat {repeat + 1}: {name}: {took:.1f} s", flush=True)
    same = len({repr(r) for r in rows.values()}) == 1
    result = {
        "what": "compute_baselines on the prepared splits: wall seconds per repeat, interleaved",
        "train_images": len(train),
        "test_images": len(test),
        "seconds": seconds,
        "median_speed_up": round(
            statistics.median(seconds[next(iter(versions))]) / statistics.median(seconds[list(versions)[1]]), 2
        ),
        "same_rows": same,
    }
    write_json(args.out or paths.reports_dir() / "benchmarks_baselines.json", result)
    print(f"speed-up {result['median_speed_up']}x (medians), same rows: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
