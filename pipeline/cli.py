"""The command line shared by the DVC stages: `python -m pipeline.<stage> [variant --seed N] [--params FILE]`."""
from __future__ import annotations

import argparse
import sys

from pipeline.config import PARAMS_FILE, ConfigError, load_params


def run_stage(stage: str, doc: str, work, argv: list[str] | None = None, *, per_run: bool = True,
              expected: tuple[type[Exception], ...] = ()) -> int:
    """Parse the arguments, run `work(params[, variant, seed])`, turn expected errors into one line on stderr."""
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.{stage}", description=doc.splitlines()[0])
    if per_run:
        parser.add_argument("variant")
        parser.add_argument("--seed", type=int, help="one of `seeds:` in params.yaml (default: the first)")
    parser.add_argument("--params", default=str(PARAMS_FILE))
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if per_run:
            params.variant(args.variant)  # an unknown variant is a ConfigError naming it
            seed = params.seeds[0] if args.seed is None else args.seed
            if seed not in params.seeds:
                raise ConfigError(f"seeds: {seed} is not listed (seeds: {params.seeds})")
            message = work(params, args.variant, seed)
        else:
            message = work(params)
    except (ConfigError, *expected) as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        return 1
    print(f"{stage}: {message}")
    return 0
