"""The PATH the tools give the processes they start (DVC, and the stages DVC runs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def path_with_this_python() -> str:
    """PATH with this interpreter's directory first, so that `dvc` and the `python` of DVC's stage commands in a
    child process are this environment's, activated or not. (Not in pipeline/cli.py: every stage depends on that
    file in dvc.yaml, so a change there reruns them all.)"""
    rest = [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry]  # "" would mean the cwd
    return os.pathsep.join([str(Path(sys.executable).parent), *rest])
