"""The tiny matrix run sequentially (`dvc repro`) and through the Ray executor (JOBS=N; its stages forked, then
fresh), side by side in one run.

    python -m benchmarks.bench_matrix            # make bench-matrix; ~10 min on 2 CPU cores

Three identical generated projects (tests' tiny data and variants, train.threads 1) are reproduced from scratch, one
with `dvc repro`, one with `python -m pipeline.tools.parallel --jobs N` (its stages forked from a process that has
imported torch and MLflow: pipeline/tools/warm_stages.py), one with the executor's stages started fresh
(COMPRESSNET_FRESH_PROCESSES=1); each wall time covers the whole command (process start-ups and DVC's commits
included). Writes reports/benchmarks_matrix.json. GPU throughput for 1, 2, 4
and 8 concurrent runs is benchmarks/bench_share.py's (make bench-matrix runs both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.arguments import positive
from pipeline import paths
from pipeline.lib.device import processor_name
from pipeline.lib.io import write_json
from pipeline.tools import warm_stages
from tests.conftest import TINY_SPEC, make_project
from tests.fakedata import make_emnist_dir

VARIANTS = {f"tiny{i}": {**TINY_SPEC, "latent_dim": 4 + i} for i in range(3)}


def timed(cmd: list[str], root: Path, env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench_matrix: {' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_matrix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--jobs", type=positive, default=os.cpu_count())
    parser.add_argument("--seeds", type=positive, default=2)
    parser.add_argument("--out", type=Path, default=paths.reports_dir() / "benchmarks_matrix.json")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-matrix-"))
    data = make_emnist_dir(base / "emnist")
    seeds = tuple(range(args.seeds))
    parallel = [sys.executable, "-m", "pipeline.tools.parallel", "--jobs", str(args.jobs)]
    commands = {  # the executor's stages forked (warm_stages.py) unless the environment says otherwise
        "sequential": (["dvc", "repro"], {}),
        "parallel": (parallel, {warm_stages.FRESH_ENV: "0"}),
        "parallel_fresh": (parallel, {warm_stages.FRESH_ENV: "1"}),
    }
    seconds, forked = {}, None
    try:
        for kind, (cmd, settings) in commands.items():
            root, env = make_project(base / kind, VARIANTS, epochs=1, data_source=str(data), seeds=seeds)
            if kind == "parallel":  # whether its stages could fork: the executor's own test, on this row's settings
                forked = warm_stages.python_module("python -m pipeline.stages.prepare", {**env, **settings}) is not None
            seconds[kind] = timed(cmd, root, {**env, **settings})
            print(f"{kind}: {seconds[kind]:.1f} s", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result = {
        "what": "the tiny matrix from scratch: dvc repro against pipeline.tools.parallel (stages forked, and fresh)",
        "runs": len(VARIANTS) * len(seeds),
        "stages": 3 + 2 * len(VARIANTS) * len(seeds) + 1,
        "jobs": args.jobs,
        "cpus": os.cpu_count(),
        "cpu": processor_name(torch.device("cpu")),
        "sequential_s": round(seconds["sequential"], 1),
        "parallel_s": round(seconds["parallel"], 1),
        "parallel_fresh_s": round(seconds["parallel_fresh"], 1),
        "stages_forked": forked,
        "speedup": round(seconds["sequential"] / seconds["parallel"], 2),
        "speedup_forked_over_fresh": round(seconds["parallel_fresh"] / seconds["parallel"], 2),
    }
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    kept = {key: existing[key] for key in ("device_sharing",) if key in existing}  # bench_share's GPU figures
    write_json(args.out, {**result, **kept})
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
