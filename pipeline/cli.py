"""The command line every DVC stage shares: `python -m pipeline.stages.<stage> [variant --seed N] [--params FILE]`."""

from __future__ import annotations

import argparse
import sys

from pipeline import paths
from pipeline.lib.config import ConfigError, load_params


def run_stage(
    stage: str,
    doc: str,
    work,
    argv: list[str] | None = None,
    *,
    per_run: bool = True,
    expected: tuple[type[Exception], ...] = (),
    options=None,
) -> int:
    """Parse the arguments, run `work(params, variant, seed)` (per run) or `work(params, args)`, print its message;
    expected errors become one line on stderr and exit status 1. `options(parser)` adds a stage's own arguments."""
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
        print(f"{stage}: error: {err}", file=sys.stderr)
        return 1
    print(f"{stage}: {message}")
    return 0
