"""A model's latents of a set of images, and the uint8 grid those of the train split span.

Kept apart from the codec's stream format (pipeline.lib.codec): the train stage stores the grid in the model file,
so what it imports reruns every training run when edited, and the stream format must not be part of that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.lib import prepared
from pipeline.lib.device import as_batch_tensor, batched
from pipeline.lib.quantize import calibrate_uint8

BATCH = 256  # inference batches of a few hundred images run 1.3-2x faster on CPU than 2048 (reports/results)


@torch.no_grad()
def encode_latents(model, images: np.ndarray, bar: str | None = None) -> torch.Tensor:
    """uint8 (N, 28, 28) upright images -> the latent the decoder sees at test time (float32, CPU); bar: the name
    of a progress bar over the batches (None: no bar)."""
    device = next(model.parameters()).device
    x = as_batch_tensor(images, device).contiguous(memory_format=torch.channels_last)
    return batched(lambda batch: model.encode(batch).float().cpu(), x, BATCH, bar)


def train_calibration(model, train_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 grid of a model: its latents' range over the train split's images (evaluate and compress agree)."""
    return calibrate_uint8(encode_latents(model, train_images, "uint8 grid: encoding the train split"))


def saved_calibration(model, saved: dict, prepared_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 grid the train stage stored in the model file (saved: its contents), so that evaluate and compress
    do not encode the train split again; for a file without one (a best-epoch file, an older model) it is computed
    from the prepared train split."""
    stored = saved.get("uint8_calibration")
    if stored is None:
        return train_calibration(model, prepared.load_split(prepared_dir, "train")[0])
    lo, hi = stored.numpy()
    return lo, hi
