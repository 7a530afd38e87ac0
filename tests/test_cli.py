"""What a stage prints when it is stopped: one line on stderr, never a traceback, and the shell's exit status."""

from __future__ import annotations

import signal

from pipeline import cli, paths
from pipeline.stages import train
from tests.conftest import REPO

ARGV = ["--params", str(REPO / "params.yaml")]


def ctrl_c(params, args):
    raise KeyboardInterrupt


def sigterm(params, args):
    raise cli.Interrupted(signal.SIGTERM)  # what pipeline.tracking's handler raises


def test_ctrl_c_is_one_line_naming_what_a_rerun_keeps(capsys):
    assert cli.run_stage("train", "doc", ctrl_c, ARGV, per_run=False, resume="the epochs are kept") == 130
    assert capsys.readouterr().err == "train: interrupted by SIGINT; the epochs are kept\n"


def test_what_a_rerun_of_train_keeps_depends_on_whether_an_epoch_finished(project_root, capsys):
    def stopped_while_training(params, variant, seed):
        raise KeyboardInterrupt

    def stage() -> str:
        argv = ["model01", "--seed", "0", *ARGV]
        assert cli.run_stage("train", "doc", stopped_while_training, argv, resume=train.what_a_rerun_keeps) == 130
        return capsys.readouterr().err

    assert stage() == "train: interrupted by SIGINT; no epoch had finished, so the same command starts the run again\n"
    paths.checkpoint_file("model01-seed0").parent.mkdir(parents=True)
    paths.checkpoint_file("model01-seed0").write_bytes(b"the last finished epoch")
    assert "its finished epochs are in checkpoints/, and the same command resumes after them" in stage()


def test_sigterm_exits_as_a_shell_reports_it():
    assert cli.run_stage("evaluate", "doc", sigterm, ARGV, per_run=False) == 143
