"""The time left in a run of many stages, for the parallel executor's progress bar.

tqdm's own estimate divides the stages left by the mean rate so far: hours wrong when a train stage takes an hour and
an evaluate one minute (after a run's first train stage it read 9 h 10 min where 35 min remained). Here
each kind of stage (train, evaluate, study, ...) takes as long as the median of its finished ones, the running
ones have that median less their time so far left, and the slots share the work evenly. Until every kind still to
run has finished once there is no estimate: each train stage's own log has its epochs' time left meanwhile.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable


def kind(name: str) -> str:
    """`train@model01-0` -> `train`."""
    return name.split("@")[0]


class StageClock:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started: dict[str, float] = {}
        self.took: dict[str, list[float]] = defaultdict(list)

    def start(self, name: str) -> None:
        self.started[name] = self.clock()

    def finish(self, name: str) -> None:
        self.took[kind(name)].append(self.clock() - self.started.pop(name))

    def forget(self, name: str) -> None:
        """A stage that did not finish (killed, to be retried): its time so far says nothing about its kind."""
        self.started.pop(name, None)

    def seconds_left(self, waiting: Iterable[str], slots: int) -> float | None:
        """The waiting stages (all assumed to run) and the running ones, spread over `slots`; None without a
        finished stage of every kind among them."""
        medians = {name: statistics.median(seconds) for name, seconds in self.took.items()}
        waiting, now = list(waiting), self.clock()
        if any(kind(name) not in medians for name in [*waiting, *self.started]):
            return None
        work = sum(medians[kind(name)] for name in waiting)
        work += sum(max(0.0, medians[kind(name)] - (now - since)) for name, since in self.started.items())
        return work / max(1, slots)


def describe(seconds: float | None) -> str:
    return "time left: after one stage of each kind" if seconds is None else f"time left ≈ {duration(seconds)}"


def duration(seconds: float) -> str:
    """Seconds as a person reads them: 45 s, 55 min, 3.5 h, 48 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"
