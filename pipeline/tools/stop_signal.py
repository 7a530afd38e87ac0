"""How the parallel executor stops on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal

from pipeline.cli import interrupted_by, signal_exit_code

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(interrupted_by(signum))
        self.exit_code = signal_exit_code(signum)


class StopSignal:
    """SIGINT's and SIGTERM's handler. It only notes the signal; the executor acts on it at its next check (every
    second while it waits, before each stage it starts). A KeyboardInterrupt raised wherever the signal lands did
    harm: inside ray.init Ray crashed (SIGSEGV), inside DVC's commit it could cut dvc.lock short, and code that
    dropped it (a __del__ the garbage collector runs) left the run waiting for ever."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
        self.install()

    def install(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def __call__(self, signum: int, frame) -> None:
        self.received.append(signum)

    def check(self) -> None:
        """Raises Stopped once a signal has come."""
        if self.received:
            raise Stopped(self.received[0])
