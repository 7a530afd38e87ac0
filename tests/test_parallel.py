"""The Ray executor against a sequential `dvc repro` of the same tiny matrix: same lock, same results, nothing left."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest
import torch
import yaml

from tests.conftest import TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

pytestmark = pytest.mark.slow
VARIANTS = {"tinyA": TINY_SPEC, "tinyB": {**TINY_SPEC, "latent_dim": 4}}
STALE = "reports/figures/from-an-earlier-run.png"
# files that record when and under which MLflow run they were made (timings, run ids): their md5 differs between any
# two runs, sequential or not; their content is compared below
RUN_SPECIFIC = ("models", "reports/history", "reports/metrics", "reports/report.md", "reports/figures")


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> dict:
    data = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    projects = {}
    parallel = ["python", "-m", "pipeline.tools.parallel", "--jobs", "2"]  # what `make repro JOBS=2` runs
    for kind, cmd in (("sequential", ["dvc", "repro"]), ("parallel", parallel)):
        root, env = make_project(tmp_path_factory.mktemp(kind), VARIANTS, epochs=1, data_source=str(data))
        (root / STALE).parent.mkdir(parents=True, exist_ok=True)
        (root / STALE).write_bytes(b"a figure of an earlier run")  # dvc repro removes outputs before a stage runs
        projects[kind] = {"root": root, "env": env, "output": run(cmd, root, env, timeout=1800)}
    return projects


def lock(project: dict) -> dict:
    return yaml.safe_load((project["root"] / "dvc.lock").read_text())["stages"]


def without_run_specific_hashes(entry: dict) -> dict:
    def strip(files: list[dict]) -> list[dict]:
        return [f if not f["path"].startswith(RUN_SPECIFIC) else {"path": f["path"]} for f in files]

    return {**entry, "deps": strip(entry.get("deps", [])), "outs": strip(entry.get("outs", []))}


def test_the_lock_lists_every_stage_as_a_sequential_repro_does(both):
    sequential, parallel = lock(both["sequential"]), lock(both["parallel"])
    assert list(parallel) == list(sequential)  # same stages, same order
    for name in sequential:
        assert without_run_specific_hashes(parallel[name]) == without_run_specific_hashes(sequential[name]), name


def test_the_results_equal_the_sequential_ones(both):
    seq, par = both["sequential"]["root"], both["parallel"]["root"]
    for run_name in ("tinyA-seed0", "tinyB-seed0"):
        a, b = (torch.load(root / "models" / f"{run_name}.pt", weights_only=True) for root in (seq, par))
        assert a["state_dict"].keys() == b["state_dict"].keys()
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), run_name
        metrics = [json.loads((root / "reports" / "metrics" / f"{run_name}.json").read_text()) for root in (seq, par)]
        assert [{k: v for k, v in m.items() if k != "run"} for m in metrics[:1]] == [
            {k: v for k, v in metrics[1].items() if k != "run"}
        ]
        for kind in ("per_class", "samples"):
            suffix = ".csv" if kind == "per_class" else ".npy"
            assert (seq / "reports" / kind / f"{run_name}{suffix}").read_bytes() == (
                par / "reports" / kind / f"{run_name}{suffix}"
            ).read_bytes()


def test_every_stage_logged_its_mlflow_runs_as_sequentially(both):
    def runs(project):
        with sqlite3.connect(project["root"] / "mlflow.db") as db:
            query = "select tags.value, runs.status from runs join tags on tags.run_uuid = runs.run_uuid"
            rows = db.execute(query + " where tags.key = 'stage'").fetchall()
        return sorted(rows)

    assert runs(both["parallel"]) == runs(both["sequential"])
    assert {status for _, status in runs(both["parallel"])} == {"FINISHED"}


def test_a_file_left_in_an_output_directory_is_removed_as_dvc_repro_removes_it(both):
    assert not (both["sequential"]["root"] / STALE).exists()
    assert not (both["parallel"]["root"] / STALE).exists()


def test_afterwards_dvc_has_nothing_to_do(both):
    project = both["parallel"]
    assert json.loads(run(["dvc", "status", "--json"], project["root"], project["env"])) == {}
    output = run(["dvc", "repro"], project["root"], project["env"])
    assert "Running stage" not in output and "Data and pipelines are up to date." in output


def test_progress_and_summary_are_shown(both):
    assert f"parallel: {len(lock(both['parallel']))} stages up to date in " in both["parallel"]["output"]
    assert f", {len(lock(both['parallel']))} of them run now" in both["parallel"]["output"]


def test_a_second_run_runs_nothing_and_says_so(both):
    project = both["parallel"]
    output = run(["python", "-m", "pipeline.tools.parallel", "--jobs", "2"], project["root"], project["env"])
    assert ", 0 of them run now" in output and "dispatched" not in output


def test_each_stage_writes_its_output_to_a_log_named_when_it_starts(both):
    project = both["parallel"]
    assert "parallel: train@tinyA-0 dispatched; its output: logs/train@tinyA-0.log (here)" in project["output"]
    assert "epoch 1/1: train " in (project["root"] / "logs" / "train@tinyA-0.log").read_text()
    assert sorted(p.stem for p in (project["root"] / "logs").iterdir()) == sorted(lock(project))


def test_a_failing_stage_stops_the_run_and_is_named(tmp_path):
    (tmp_path / "broken").mkdir()
    root, env = make_project(tmp_path / "broken", VARIANTS, epochs=1, data_source=str(tmp_path / "no-such-dir"))
    result = subprocess.run(
        ["python", "-m", "pipeline.tools.parallel", "--jobs", "2"], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "stage prepare failed" in result.stderr and "no-such-dir" in result.stderr
    assert f"all of it in {root / 'logs' / 'prepare.log'}" in result.stderr
    assert not (root / "dvc.lock").exists()  # nothing committed
