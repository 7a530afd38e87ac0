"""What a stage prints when it is stopped: one line on stderr, never a traceback, and the shell's exit status."""

from __future__ import annotations

import signal

from pipeline import cli
from tests.conftest import REPO

ARGV = ["--params", str(REPO / "params.yaml")]


def ctrl_c(params, args):
    raise KeyboardInterrupt


def sigterm(params, args):
    raise cli.Interrupted(signal.SIGTERM)  # what pipeline.tracking's handler raises


def test_ctrl_c_is_one_line_naming_what_a_rerun_keeps(capsys):
    assert cli.run_stage("train", "doc", ctrl_c, ARGV, per_run=False, resume="the epochs are kept") == 130
    assert capsys.readouterr().err == "train: interrupted by SIGINT; the epochs are kept\n"


def test_sigterm_exits_as_a_shell_reports_it():
    assert cli.run_stage("evaluate", "doc", sigterm, ARGV, per_run=False) == 143
