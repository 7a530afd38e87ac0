"""The CNZ1 format is frozen, and decoding never fails other than with the codec's one-line error.

tests/expected/cnz1/ holds a small model file, one stream per mode written by this version, and the images each
decodes to (made once by tests/expected/cnz1/make.py). A later version must decode them to the same bytes, or
change the format's magic. The fuzz test feeds mutated streams (with their checksum fixed, so that mutations
reach the parser) to the decoder: each ends in latents of the claimed shape or a CodecError.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.lib import codec
from pipeline.lib.models import load_model

GOLDEN = Path(__file__).with_name("expected") / "cnz1"
MUTATIONS = int(os.environ.get("CNZ_FUZZ_MUTATIONS", 300))  # per mode; `make fuzz` runs 20,000


@pytest.fixture(scope="module")
def model():
    return load_model(GOLDEN / "model.pt", torch.device("cpu"))[0]


@pytest.mark.parametrize("mode", list(codec.MODES))
def test_streams_of_this_format_decode_to_the_same_images(mode, model):
    stream = (GOLDEN / f"{mode}.cnz").read_bytes()
    assert stream[:4] == codec.MAGIC == b"CNZ1"
    decoded_mode, latents = codec.unpack(model, GOLDEN / "model.pt", stream)
    assert decoded_mode == mode
    assert np.array_equal(codec.decode_images(model, latents), np.load(GOLDEN / f"{mode}.npy"))


def mutate(stream: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: flipped bytes, a cut, inserted bytes or a rewritten header field; checksum refitted."""
    body = bytearray(stream[:-4])
    kind = rng.integers(4)
    if kind == 0:
        for at in rng.integers(0, len(body), rng.integers(1, 4)):
            body[at] ^= int(rng.integers(1, 256))
    elif kind == 1:
        body = body[: rng.integers(0, len(body))]
    elif kind == 2:
        at = int(rng.integers(0, len(body) + 1))
        body[at:at] = rng.integers(0, 256, rng.integers(1, 9)).astype(np.uint8).tobytes()
    elif len(body) >= codec.HEADER.size:
        field = rng.choice(["n", "dim", "mode"])
        offset, fmt = {"n": (13, "<I"), "dim": (17, "<H"), "mode": (4, "<B")}[field]
        struct.pack_into(fmt, body, offset, int(rng.integers(0, 2 ** (8 * struct.calcsize(fmt)))))
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def fuzz(model, mode: str, count: int, seed: int) -> int:
    """Decode `count` mutations of a real stream; returns how many decoded (the rest raised CodecError)."""
    stream, rng, decoded = (GOLDEN / f"{mode}.cnz").read_bytes(), np.random.default_rng(seed), 0
    for _ in range(count):
        damaged = mutate(stream, rng)
        try:
            _, latents = codec.unpack(model, GOLDEN / "model.pt", damaged)
        except codec.CodecError:
            continue
        n, dim = codec.HEADER.unpack_from(damaged)[3:]
        assert latents.shape == (n, dim) and torch.isfinite(latents).all()
        decoded += 1
    return decoded


@pytest.mark.parametrize("mode", list(codec.MODES))
def test_mutated_streams_decode_or_fail_with_one_line(mode, model):
    decoded = fuzz(model, mode, MUTATIONS, seed=list(codec.MODES).index(mode))
    assert decoded < MUTATIONS  # the mutations did reach the checks
