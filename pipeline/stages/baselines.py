"""DVC stage `baselines`: classical compressors (pipeline.lib.baselines) on the variants' test images.

Writes reports/baselines.json: rows of method, setting, bytes_per_image and the evaluate stage's metrics.
The report stage puts them on the rate-distortion figure beside the variants.
"""

from __future__ import annotations

import sys
from concurrent.futures.process import BrokenProcessPool

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.lib import prepared
from pipeline.lib.baselines import compute_baselines
from pipeline.lib.config import Params
from pipeline.lib.io import DataError, write_json


def write_baselines(params: Params) -> str:
    data_dir, window = paths.prepared_dir(), params.evaluate.ssim_window
    train, test = prepared.load_split(data_dir, "train")[0], prepared.load_split(data_dir, "test")[0]
    rows = compute_baselines(params.rate_distortion, window, train, test)
    result = {
        "n_test": int(len(test)),
        "ssim_window": window,
        "data_manifest_sha256": prepared.manifest_digest(data_dir),
        "rows": rows,
    }
    write_json(paths.baselines_file(), result)
    return f"wrote {len(rows)} rows to {paths.baselines_file()}"


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        "baselines",
        __doc__,
        lambda params, _: write_baselines(params),
        argv,
        per_run=False,
        expected=(DataError, BrokenProcessPool),  # a codec worker killed (out of memory): one line, not a traceback
    )


if __name__ == "__main__":
    sys.exit(main())
