"""A stage under the parallel executor writes its output to logs/<stage>.log as it runs, not when it exits."""

from __future__ import annotations

import os
import sys

from pipeline.tools import ray_tasks

# exits 0 only if the line it printed is in its log already: Python block-buffers print() to a file unless told not to
CHILD = """import pathlib, sys
print("epoch 1/15: train 0.05710 val 0.01186")
sys.exit(0 if "epoch 1/15" in pathlib.Path(sys.argv[1]).read_text() else 3)
"""


def test_a_stage_s_printed_lines_reach_its_log_while_it_runs(tmp_path):
    (tmp_path / "child.py").write_text(CHILD)
    log = ray_tasks.stage_log(tmp_path, "train@tiny-0")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    code, tail = ray_tasks.run_process(f"{sys.executable} child.py {log}", tmp_path, env, log)
    assert (code, tail) == (0, "epoch 1/15: train 0.05710 val 0.01186\n")


def test_the_previous_run_s_log_is_kept_beside_it(tmp_path):
    log = ray_tasks.stage_log(tmp_path, "train@tiny-0")
    for word in ("first", "second"):
        assert ray_tasks.run_process(f"echo {word}", tmp_path, dict(os.environ), log) == (0, f"{word}\n")
    assert log.read_text() == "second\n" and log.with_name("train@tiny-0.log.1").read_text() == "first\n"


def test_the_returned_end_of_a_long_output_starts_on_a_character(tmp_path):
    (tmp_path / "child.py").write_text(f"print('é' * {ray_tasks.OUTPUT_TAIL})")  # two bytes each
    log, env = ray_tasks.stage_log(tmp_path, "report"), {**os.environ, "PYTHONIOENCODING": "utf-8"}  # any locale
    code, tail = ray_tasks.run_process(f"{sys.executable} child.py", tmp_path, env, log)
    assert code == 0 and set(tail.rstrip("\n")) == {"é"}
