"""Throw-away probe: L-BFGS refinement's decoder passes per image and cost per pass on this CPU, by batch size.

PYTHONPATH=<tree> python refine_probe.py MODEL PREPARED PER_CLASS BATCH [BATCH ...] > out.json
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.lib import encoding, models, prepared, refine, search_decoder
from pipeline.lib.config import CodecConfig
from pipeline.lib.device import configure_compute
from pipeline.lib.io import sha256_file

model_file, prepared_dir, per_class, *batches = sys.argv[1:]
configure_compute(0)
model, saved = models.load_model(Path(model_file), torch.device("cpu"))
calibration = encoding.saved_calibration(model, saved, Path(prepared_dir))
images, labels = prepared.load_split(Path(prepared_dir), "test")
index = np.concatenate([np.flatnonzero(labels == c)[: int(per_class)] for c in np.unique(labels)])
images = images[index]
latents = encoding.encode_latents(model, images)
passes = {"calls": 0, "rows": 0}
original = search_decoder.inference_decoder


def counting(m):
    decoder, mirrored = original(m)

    def counted(z):
        passes["calls"] += 1
        passes["rows"] += len(z)
        return decoder(z)

    return counted, mirrored


refine.inference_decoder = counting
cfg = CodecConfig(refine_steps=40)
results = []
for batch in [int(b) for b in batches]:
    refine.REFINE_BATCH = batch
    passes.update(calls=0, rows=0)
    started = time.perf_counter()
    refine.refine_latents(model, images, latents, cfg, calibration)
    seconds = time.perf_counter() - started
    row = {
        "batch": batch,
        "images": len(images),
        "ms_per_image": 1000 * seconds / len(images),
        "passes": passes["calls"],
        "rows_per_image": passes["rows"] / len(images),
        "ms_per_row": 1000 * seconds / passes["rows"],
    }
    results.append(row)
    print(json.dumps(row), file=sys.stderr)
print(
    json.dumps({"model_sha256": sha256_file(Path(model_file)), "per_class": int(per_class), "rows": results}, indent=1)
)
