"""The results committed at the repo root (the root run's dvc.lock and reports/: the README's answer) are what that
dvc.lock records: every output under reports/ with the md5 it names, files and directories, and the report drawn from
the runs' metrics as they are. Read as HEAD holds them, not the working tree, which a local run may have changed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from scripts.keep_root_run import REPORT, lock_stages
from scripts.root_run_files import content_md5, read_files, recorded_files, stale_inputs
from tests.conftest import REPO


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """HEAD's dvc.lock and what it names under reports/, as outputs or as the report's inputs."""
    where = tmp_path_factory.mktemp("committed")
    stages = yaml.safe_load(subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=REPO, capture_output=True).stdout)
    named = {
        item["path"] for entry in stages["stages"].values() for item in entry.get("outs", []) + entry.get("deps", [])
    }
    paths = sorted(path for path in named if path.startswith("reports/"))
    archive = subprocess.run(["git", "archive", "HEAD", "dvc.lock", *paths], cwd=REPO, capture_output=True)
    assert archive.returncode == 0, archive.stderr.decode()
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


def test_every_output_the_committed_dvc_lock_names_under_reports_is_committed_as_it_records(committed):
    expected = recorded_files(lock_stages(committed))
    contents = read_files(committed, list(expected))
    assert len(expected) > 100  # the root run: 24 runs' outputs, the study stages', the baselines', the report's
    assert {path: content_md5(contents, path) for path in expected} == expected


def test_the_committed_report_read_the_metrics_and_reports_committed_beside_it(committed):
    assert stale_inputs(committed, lock_stages(committed)[REPORT], left_out=set()) == []
