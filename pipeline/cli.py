"""The command line every DVC stage shares: `python -m pipeline.stages.<stage> [variant --seed N] [--params FILE]`."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from pipeline import paths
from pipeline.lib.config import ConfigError, load_params


def interrupted_by(signum: int) -> str:
    """How a stage, or the parallel executor, says which signal stopped it."""
    return f"interrupted by {signal.Signals(signum).name}"


def signal_exit_code(signum: int) -> int:
    """128 + the signal's number, as a shell reports a process ended by that signal; the parallel executor reads it."""
    return 128 + signum


class Interrupted(KeyboardInterrupt):
    """A signal other than Ctrl-C's, raised as Ctrl-C is, so that the stage stops the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def run_stage(
    stage: str,
    doc: str,
    work,
    argv: list[str] | None = None,
    *,
    per_run: bool = True,
    expected: tuple[type[Exception], ...] = (),
    options=None,
    resume: str | Callable[[argparse.Namespace], str] = "",
) -> int:
    """Parse the arguments, run `work(params, variant, seed)` (per run) or `work(params, args)`, print its message;
    expected errors and OS errors (a full disk) become one line on stderr and exit status 1; Ctrl-C, or a SIGTERM
    that tracking turned into an Interrupted, one line with `resume` (what rerunning keeps) and 128 + the signal's
    number (`resume` may be a function of the arguments: what is kept depends on how far it got). `options(parser)`
    adds a stage's own arguments."""
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{stage}", description=doc.splitlines()[0])
    if per_run:
        parser.add_argument("variant")
        parser.add_argument("--seed", type=int, required=True, help="the run's seed (dvc.yaml passes one of `seeds:`)")
    parser.add_argument("--params", help="the params file (default: params.yaml at the project root)")
    if options:
        options(parser)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params or paths.params_file())
        if per_run:
            params.variant(args.variant)  # an unknown variant is a ConfigError naming it
            message = work(params, args.variant, args.seed)
        else:
            message = work(params, args)
    except (ConfigError, *expected) as err:
        print(f"{stage}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        kept = resume(args) if callable(resume) else resume
        print(f"{stage}: {interrupted_by(signum)}" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return signal_exit_code(signum)
    except OSError as err:  # a full disk, a read-only directory: the file and the reason, not a traceback
        print(f"{stage}: error: {os_error_line(err)}", file=sys.stderr)
        return 1
    print(f"{stage}: {message}")
    return 0


def os_error_line(err: OSError) -> str:
    """The file and the reason (a full disk, a missing file), without the errno's repr."""
    return (f"{err.filename}: " if err.filename else "") + str(err.strerror or err)


def one_line(err: BaseException) -> str:
    """The error's first line. An error from MLflow's store says what its root cause says (the database driver's
    message: "database or disk is full"), not the wrapper's SQL and advice."""
    if not type(err).__module__.startswith("pipeline"):
        while err.__cause__ is not None:
            err = err.__cause__
        err = getattr(err, "orig", None) or err
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
