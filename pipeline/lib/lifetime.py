"""A child process that the kernel kills when its parent dies (Linux's PR_SET_PDEATHSIG): nothing goes on working, or
waiting on a pipe, for a parent that is gone."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """From now on the kernel SIGKILLs this process when its parent dies. `parent` is the parent's pid as the caller
    knows it: if this process's parent is no longer that one, the parent died before the death signal was set, and
    this process exits at once. Elsewhere than on Linux, only that check."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
