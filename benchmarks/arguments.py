"""argparse types the benchmarks share: counts that must be whole numbers of at least 1 (or 0), git revisions."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable

from pipeline.paths import REPO_ROOT


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`, else argparse's one-line error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


positive = whole_number(1)
non_negative = whole_number(0)


def git_revision(rev: str) -> str:
    """An argparse type: a revision of this repository's git history, checked before any work starts."""
    command = ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"]
    if subprocess.run(command, cwd=REPO_ROOT, capture_output=True).returncode != 0:
        raise argparse.ArgumentTypeError(f"{rev!r} is not a git revision of {REPO_ROOT}")
    return rev
