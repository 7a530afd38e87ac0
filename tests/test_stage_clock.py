"""The parallel executor's time left (pipeline.tools.stage_clock): each kind of stage takes the median of its finished
ones, running stages count what they have left, slots share the work; no estimate before a kind has finished once."""

from __future__ import annotations

import pytest

from pipeline.tools.stage_clock import StageClock, describe, duration


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ran(clock: StageClock, time: FakeTime, name: str, seconds: float) -> None:
    clock.start(name)
    time.now += seconds
    clock.finish(name)


@pytest.fixture
def timed():
    time = FakeTime()
    clock = StageClock(time)
    ran(clock, time, "train@a-0", 100)
    ran(clock, time, "train@a-1", 300)
    ran(clock, time, "train@b-0", 120)  # train's median: 120 s
    ran(clock, time, "evaluate@a-0", 10)
    return clock, time


def test_each_waiting_stage_takes_its_kinds_median(timed):
    clock, _ = timed
    assert clock.seconds_left(["train@b-1", "train@c-0", "evaluate@a-1"], slots=1) == pytest.approx(250)


def test_a_running_stage_counts_what_its_median_leaves_and_the_slots_share_the_work(timed):
    clock, time = timed
    clock.start("train@b-1")
    time.now += 90
    assert clock.seconds_left(["evaluate@b-1"], slots=2) == pytest.approx((30 + 10) / 2)
    time.now += 100  # past its kind's median: nothing left is counted, never less than nothing
    assert clock.seconds_left(["evaluate@b-1"], slots=1) == pytest.approx(10)


def test_no_estimate_until_every_kind_to_run_has_finished_once(timed):
    clock, _ = timed
    assert clock.seconds_left(["report"], slots=1) is None
    clock.start("study@model01")
    assert clock.seconds_left([], slots=1) is None


def test_a_killed_stage_neither_counts_as_running_nor_teaches_its_kinds_time(timed):
    clock, time = timed
    clock.start("classifier")
    time.now += 5
    clock.forget("classifier")
    assert clock.seconds_left(["train@c-0"], slots=1) == pytest.approx(120)
    assert "classifier" not in clock.took


def test_the_estimate_reads_in_minutes_or_seconds():
    assert describe(None) == "time left: after one stage of each kind"
    assert describe(3300) == "time left ≈ 55 min"
    assert describe(45) == "time left ≈ 45 s"


def test_long_durations_read_in_hours():
    assert [duration(s) for s in (45, 3300, 7199, 7200, 3.5 * 3600, 47.7 * 3600)] == [
        "45 s",
        "55 min",
        "120 min",
        "2.0 h",
        "3.5 h",
        "48 h",
    ]
