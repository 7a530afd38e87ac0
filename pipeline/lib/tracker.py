"""The tracker interface the training loop and the stages log through, and a no-op tracker that records nothing.

pipeline.tracking implements it on MLflow; this module imports no tracking library, so the library and the GPU
runner work where MLflow is not installed.
"""

from __future__ import annotations

import contextlib
import typing


class NoOpRun:
    """A run that records nothing (tracking off): every method of MlflowRun, doing nothing."""

    run_id = None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class NoOpTracker:
    """Tracking switched off: the GPU runner and library users without MLflow."""

    experiment = None

    @contextlib.contextmanager
    def run(self, name: str, tags: dict, resume_id: str | None = None):
        yield NoOpRun()

    def attach(self, run_id: str | None) -> NoOpRun:
        return NoOpRun()

    def resumable(self, run_id: str | None) -> bool:
        return False

    def new_finished_run(self, name: str, tags: dict) -> NoOpRun:
        return NoOpRun()


class Tracker(typing.Protocol):
    """What stages and the training loop use: MlflowTracker or NoOpTracker."""

    experiment: str | None

    def run(self, name: str, tags: dict, resume_id: str | None = None) -> typing.ContextManager: ...

    def attach(self, run_id: str | None): ...

    def resumable(self, run_id: str | None) -> bool: ...

    def new_finished_run(self, name: str, tags: dict): ...
