"""DVC stage `prepare`: get EMNIST-Balanced (official download or a local copy), verify, split, store.

data.source is a directory of IDX files, or a file of SHA-256s naming the official files to download from data.url
(pipeline/emnist_balanced.sha256). Either way it is a dependency in dvc.yaml: a changed byte there reruns prepare.

Writes data/prepared/{train,val,test}_{images,labels}.npy (uint8 upright images, labels),
mapping.json and manifest.json. The test split is passed through untouched; val is carved from train.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.lib.config import Params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.download import fetch_official
from pipeline.lib.idx import parse_sha256sums
from pipeline.lib.io import DataError


def prepare(params: Params, out_dir: Path | None = None) -> str:
    cfg, out_dir, started = params.data, out_dir or paths.prepared_dir(), time.perf_counter()
    source = paths.resolve_source(cfg.source)
    directory = fetch_official(cfg.url, paths.raw_dir(), parse_sha256sums(source)) if source.is_file() else source
    manifest = prepare_from_directory(cfg, directory, out_dir)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    return f"{counts} images from {cfg.source} in {time.perf_counter() - started:.1f} s -> {out_dir}"


def main(argv: list[str] | None = None) -> int:
    def options(parser):
        parser.add_argument("--out", type=Path, help="where to write (default: data/prepared)")

    return run_stage(
        "prepare",
        __doc__,
        lambda params, args: prepare(params, args.out),
        argv,
        per_run=False,
        expected=(DataError,),
        options=options,
    )


if __name__ == "__main__":
    sys.exit(main())
