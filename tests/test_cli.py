"""What a stage prints when it stops: one line on stderr, never a traceback."""

from __future__ import annotations

from pipeline import cli
from tests.conftest import REPO


def stop(params, args):
    raise KeyboardInterrupt


def test_ctrl_c_is_one_line_naming_what_a_rerun_keeps(capsys):
    argv = ["--params", str(REPO / "params.yaml")]
    assert cli.run_stage("train", "doc", stop, argv, per_run=False, resume="the epochs are kept") == 130
    assert capsys.readouterr().err == "train: interrupted; the epochs are kept\n"
