"""The parallel executor's stop signal: a Ctrl-C or SIGTERM is noted, never raised where it lands."""

from __future__ import annotations

import os
import signal

import pytest

from pipeline.tools.stop_signal import Stopped, StopSignal


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_is_noted_and_raised_only_by_check(signum, code):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = StopSignal()
    try:
        stop.check()  # nothing yet
        os.kill(os.getpid(), signum)  # its handler runs at once, in this (the main) thread
        os.kill(os.getpid(), signal.SIGINT)  # a second one keeps the first as the reason
        assert stop.received == [signum, signal.SIGINT]
        with pytest.raises(Stopped, match=f"interrupted by {signal.Signals(signum).name}") as raised:
            stop.check()
        assert raised.value.exit_code == code
    finally:
        stop.restore()
    assert {s: signal.getsignal(s) for s in before} == before
