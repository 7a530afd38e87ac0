"""A process that dies with its parent (pipeline/lib/lifetime.py), and the executor's forkserver set up as one."""

from __future__ import annotations

import subprocess
import sys

DEATH_SIGNAL = "import ctypes; signal = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(signal))"  # GET


def run_python(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def test_a_process_whose_parent_is_already_another_exits_at_once_and_one_whose_is_not_dies_with_it():
    gone = run_python("from pipeline.lib.lifetime import die_with_parent; die_with_parent(1); print('went on')")
    assert (gone.returncode, gone.stdout) == (1, "")
    alive = run_python(
        f"import os; from pipeline.lib.lifetime import die_with_parent; die_with_parent(os.getppid()); {DEATH_SIGNAL}; "
        "print(signal.value)"
    )
    assert alive.stdout.split() == ["9"]  # SIGKILL


def test_the_forkserver_dies_with_its_worker_names_itself_to_its_stages_and_says_which_preload_failed():
    setup = run_python(
        "import os; from pipeline.tools import warm_stages; "
        "warm_stages.HEAVY_LIBRARIES[:] = ['colorsys', 'no_such_library_anywhere']; "
        f"import pipeline.tools.forkserver_setup; {DEATH_SIGNAL}; "
        "print(signal.value, warm_stages.forkserver_pid == os.getpid(), 'colorsys' in __import__('sys').modules)"
    )
    assert setup.stdout.split() == ["9", "True", "True"]
    assert "preloading no_such_library_anywhere failed" in setup.stderr
