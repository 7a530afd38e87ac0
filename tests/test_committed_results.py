"""The results committed at the repo root (the root run's dvc.lock and reports/: the README's answer) are what that
dvc.lock records: every output under reports/ with the md5 it names, files and directories, and the report drawn from
the runs' metrics as they are."""

from __future__ import annotations

from scripts.keep_root_run import REPORT, lock_stages
from scripts.root_run_files import content_md5, read_files, recorded_files, stale_inputs
from tests.conftest import REPO


def test_every_output_the_root_dvc_lock_names_under_reports_is_there_as_it_records():
    expected = recorded_files(lock_stages(REPO))
    contents = read_files(REPO, list(expected))
    assert len(expected) > 100  # the root run: 24 runs' outputs, the study stages', the baselines', the report's
    assert {path: content_md5(contents, path) for path in expected} == expected


def test_the_committed_report_read_the_metrics_and_reports_the_repo_holds():
    assert stale_inputs(REPO, lock_stages(REPO)[REPORT]) == []
