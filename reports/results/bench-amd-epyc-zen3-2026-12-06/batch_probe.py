"""Throw-away probe: model01's fp32 channels_last training step at batch 128 (params.yaml's) against batch 256,
per image, epochs of the same 2,560 images alternating in one process after a warm-up of each (the order swapped
every round). Run: COMPRESSNET_ROOT=<root with prepared data> PYTHONPATH=. python batch_probe.py"""

import dataclasses
import statistics
import time

import torch

from pipeline import paths
from pipeline.lib import prepared
from pipeline.lib.config import load_params
from pipeline.lib.device import as_batch_tensor, configure_compute, pick_device
from pipeline.lib.trainer import Trainer

ROUNDS, IMAGES = 8, 2560
configure_compute(0)
base = load_params("params.yaml")
x = as_batch_tensor(prepared.load_split(paths.prepared_dir(), "train")[0], torch.device("cpu"))


def trainer(batch: int) -> Trainer:
    train = dataclasses.replace(base.train_for("model01"), precision="fp32", channels_last=True, batch_size=batch,
                                steps_per_epoch=IMAGES // batch, epochs=ROUNDS + 1)
    params = dataclasses.replace(base, train=train, matrix=["model01"],
                                 variants={"model01": dataclasses.replace(base.variant("model01"), train={})})
    t = Trainer(params, "model01", 0, pick_device("cpu"), train_images=len(x))
    t.train_epoch(x, epoch=0, progress=False)
    return t


trainers = {128: trainer(128), 256: trainer(256)}
rates = {128: [], 256: []}
for r in range(ROUNDS):
    for batch in ((128, 256) if r % 2 == 0 else (256, 128)):
        started = time.perf_counter()
        trainers[batch].train_epoch(x, epoch=r + 1, progress=False)
        rates[batch].append(trainers[batch].images_per_epoch / (time.perf_counter() - started))
for batch, values in rates.items():
    print(f"batch {batch}: median {statistics.median(values):6.1f} img/s  ({min(values):.1f}-{max(values):.1f})  {values}")
