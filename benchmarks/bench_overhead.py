"""Each stage's wall time split into its own work and the overhead around it, for two code versions side by side.

    python -m benchmarks.bench_overhead                 # this working tree only
    python -m benchmarks.bench_overhead --before REV    # a git revision too, in the same run (interleaved)

On the tests' tiny generated data (470 train images) with a study-sized variant and the default params otherwise
(MLflow logging and model registration on), every stage runs as DVC runs it: a fresh `python -m
pipeline.stages.<stage>` process; and this working tree's stages again as the parallel executor runs them
("after, forked": children of a forkserver that has imported torch and MLflow once, whose start is timed on its own
as forkserver_start_s). Work is what a stage records it spent computing (train: its training steps;
evaluate: its timed passes; report: writing the report and its figures). On data this small it is a fraction of a
second except for the report's figures, so the rest of the wall time is overhead: interpreter and imports, the
tracking store, logging, files, and the little work a stage does not time (validation, uint8 streams).
Writes reports/benchmarks_overhead.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from benchmarks.arguments import git_revision
from pipeline import paths
from pipeline.lib.io import write_json
from pipeline.tools import ray_tasks, warm_stages
from pipeline.tools.child_path import path_with_this_python
from tests.conftest import REPO, make_project
from tests.fakedata import make_emnist_dir

STAGES = ("prepare", "classifier", "baselines", "train", "evaluate", "report")
FORKED = "after, forked"  # this working tree's stages as the executor runs them (pipeline/tools/warm_stages.py)
PER_RUN = {"train", "evaluate"}


def checkout(rev: str, root: Path) -> None:
    """The tracked files of a git revision, as a fresh clone of it would have them."""
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")


def project(base: Path, rev: str | None, variant: str, data: Path) -> tuple[Path, dict]:
    """A generated project at `rev` (None: this working tree) training `variant` for a few batches, seed 0."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    root, env = make_project(base, params["variants"], epochs=1, data_source=str(data))
    if rev:
        for path in root.iterdir():
            if path.is_dir() and path.name != ".git":
                shutil.rmtree(path)
            elif path.is_file():
                path.unlink()
        checkout(rev, root)
        params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["source"] = str(data)
    params["matrix"], params["seeds"] = [variant], [0]
    params["train"].update(epochs=1, steps_per_epoch=4)
    params["classifier"]["epochs"] = 1
    params["study"]["models"] = []
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root, env


def stage_command(stage: str, variant: str) -> list[str]:
    return [sys.executable, "-m", f"pipeline.stages.{stage}", *([variant, "--seed", "0"] if stage in PER_RUN else [])]


def run_stage(root: Path, env: dict, stage: str, variant: str, forked: bool = False) -> float:
    """The stage's wall time: a fresh process, or (forked) a child of the forkserver as the executor runs it."""
    started = time.perf_counter()
    if forked:
        command = shlex.join(["python", *stage_command(stage, variant)[1:]])  # PATH: this environment's python
        log = ray_tasks.stage_log(root, stage)
        code, output = ray_tasks.run_process(command, root, {**env, warm_stages.FRESH_ENV: "0"}, log)
    else:
        result = subprocess.run(stage_command(stage, variant), cwd=root, env=env, capture_output=True, text=True)
        code, output = result.returncode, result.stderr
    if code != 0:
        sys.exit(f"bench_overhead: {stage} failed ({root.name} version):\n{output[-3000:]}")
    return time.perf_counter() - started


def recorded_work(root: Path, stage: str, variant: str) -> float:
    """The seconds a stage records it spent computing (train: its epochs' training steps, in the history; evaluate:
    its timed passes and refinement, in the metrics; report: writing the report and its figures, in its MLflow run,
    from 2026-12-05 on); 0 for stages or revisions that record none (the others' work is tiny on this data)."""
    run = f"{variant}-seed0"
    if stage == "train":
        return float(pd.read_csv(root / "reports" / "history" / f"{run}.csv").seconds.sum())
    if stage == "evaluate":
        metrics = json.loads((root / "reports" / "metrics" / f"{run}.json").read_text())["run"]
        return float(metrics["eval_seconds"] + metrics["refine_seconds"])
    if stage == "report":
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")  # the project's own store, as its stages use
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        latest = client.search_runs(
            experiments, "attributes.run_name = 'report'", order_by=["attributes.start_time DESC"], max_results=1
        )
        return float(latest[0].data.metrics.get("report_seconds", 0.0)) if latest else 0.0
    return 0.0


def import_floor(env: dict) -> float:
    """A bare interpreter importing torch: the part of any stage's overhead no code change removes."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
    return time.perf_counter() - started


def forkserver_start(root: Path, env: dict) -> float:
    """What the executor's first stage on a Ray worker pays once: the forkserver started and its libraries imported
    (timed as a stage that imports nothing of its own)."""
    started = time.perf_counter()
    code, output = ray_tasks.run_process("python -m pipeline.tools.child_path", root, env, root / "forkserver.log")
    if code != 0:
        sys.exit(f"bench_overhead: the forkserver did not start:\n{output[-3000:]}")
    return time.perf_counter() - started


def measure(args, base: Path) -> dict:
    """Every stage of each version's generated project under `base`, timed; this working tree's also as the executor
    runs them (forked)."""
    data = make_emnist_dir(base / "emnist")
    here = {**os.environ, "PATH": path_with_this_python()}
    forks = warm_stages.python_module("python -m pipeline.tools.child_path", here) is not None
    if not forks:
        print("bench_overhead: stages are not forked on this machine (warm_stages.python_module): fresh ones only")
    versions = {"after": None, **({FORKED: None} if forks else {}), **({"before": args.before} if args.before else {})}
    projects = {name: project(base / name, rev, args.variant, data) for name, rev in versions.items()}
    started = forkserver_start(*projects[FORKED]) if forks else None
    rows = []
    for stage in STAGES:  # the versions interleaved stage by stage, so all see the same machine load
        for name, (root, env) in projects.items():
            wall = run_stage(root, env, stage, args.variant, forked=name == FORKED)
            work = recorded_work(root, stage, args.variant)
            rows.append({"version": name, "stage": stage, "wall_s": wall, "work_s": work, "overhead_s": wall - work})
            print(f"{name:13} {stage:10} wall {wall:6.1f} s  work {work:5.1f} s  overhead {wall - work:6.1f} s")
    return {
        "what": "per-stage wall time = work the stage records + overhead, tiny data, study-sized variant",
        "variant": args.variant,
        "before": args.before,
        "import_torch_s": round(import_floor(projects["after"][1]), 2),
        "forkserver_start_s": started and round(started, 2),
        "stages": pd.DataFrame(rows).round(2).to_dict(orient="records"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--before", metavar="REV", type=git_revision, help="a git revision to measure beside this working tree"
    )
    parser.add_argument("--variant", default="model01")
    parser.add_argument("--out", type=Path, default=paths.reports_dir() / "benchmarks_overhead.json")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        result = measure(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # two generated projects: tens of MB a run
    write_json(args.out, result)
    table = pd.DataFrame(result["stages"])
    print(table.pivot(index="stage", columns="version", values="overhead_s").loc[list(STAGES)].to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
