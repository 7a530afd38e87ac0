"""Waiting out another DVC process's hold on the repo: DVC itself gives up after 3 s ("Unable to acquire lock"),
which a `dvc status` in another shell can take while the executor commits a stage that trained for hours."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

from dvc.lock import LockError
from tqdm import tqdm

from pipeline.tools.stop_signal import StopSignal

PATIENCE_S = 600  # then the LockError stands: a DVC process that holds the lock this long is more than a glance
T = TypeVar("T")


def while_locked(action: Callable[[], T], what: str, stop: StopSignal) -> T:
    """action() tried again while DVC's repo lock is held elsewhere (each try waits DVC's own 3 s), up to
    PATIENCE_S; a stop signal ends the wait. `what`: the action, as the one line said while waiting names it."""
    deadline, said = time.monotonic() + PATIENCE_S, False
    while True:
        try:
            return action()
        except LockError:
            stop.check()
            if time.monotonic() > deadline:
                raise
            if not said:
                tqdm.write(
                    f"parallel: {what}: waiting for another DVC process to release the repo's lock", file=sys.stderr
                )
                said = True
