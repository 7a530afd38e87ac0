"""Writes this folder once: a tiny model file, one CNZ1 stream per mode, and the images each decodes to.

Run from the repo root: python -m tests.expected.cnz1.make. Rewriting these files is a format change: do it only
together with a new magic (CNZ2), so that streams written before still decode as they did.
"""

from pathlib import Path

import numpy as np
import torch

from pipeline.lib import codec, encoding
from pipeline.lib.config import VariantSpec
from pipeline.lib.models import build_model
from tests.conftest import TINY_SPEC
from tests.fakedata import glyphs

OUT = Path(__file__).parent

if __name__ == "__main__":
    torch.manual_seed(0)
    spec = {**TINY_SPEC, "rate_weight": 0.01}
    model = build_model(VariantSpec(**spec)).eval()
    torch.save({"spec": spec, "state_dict": model.state_dict()}, OUT / "model.pt")
    images = np.ascontiguousarray(glyphs(np.arange(12) % 47, seed=3).transpose(0, 2, 1))
    latents = encoding.encode_latents(model, images)
    for mode in codec.MODES:
        stream = codec.pack(model, OUT / "model.pt", latents, mode)
        (OUT / f"{mode}.cnz").write_bytes(stream)
        np.save(OUT / f"{mode}.npy", codec.decode_images(model, codec.unpack(model, OUT / "model.pt", stream)[1]))
