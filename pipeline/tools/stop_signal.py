"""How the parallel executor stops on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal


class StopSignal:
    """SIGINT's and SIGTERM's handler. Until armed it only notes the signal: Ray crashes (SIGSEGV) when Ctrl-C comes
    inside ray.init. The executor also checks it while it waits: the code a KeyboardInterrupt lands in may drop it
    (as a __del__ that the garbage collector runs does), and the run then waited for ever."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.armed = False
        self.install()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self)

    def __call__(self, signum: int, frame) -> None:
        self.received = signum
        if self.armed:
            raise KeyboardInterrupt(f"stopped by signal {signum}")

    def arm(self) -> None:
        """From now on a signal raises KeyboardInterrupt; one noted before raises it now."""
        self.armed = True
        self.check()

    def check(self) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"stopped by signal {self.received}")
