"""A real compressor built from a trained variant: images -> bitstream -> images (the CLI: pipeline.tools.codec).

Modes:
  uint8        any variant: each latent dimension as one byte, scale/offset calibrated on the train split and
               carried in the stream (8 bytes per dimension). With codec.refine_steps > 0 in params.yaml the
               encoder's latents are first refined against the decoder (pipeline.lib.refine): slower to compress,
               the same decoder and stream format;
  uint8_range  the same codes, range-coded (constriction) under a quantised Gaussian per dimension whose mean
               and spread, measured on the stream's own codes, it carries (8 more bytes per dimension): the same
               images, in fewer bytes once a stream holds more than ~100 images; records are no longer a fixed
               `dim` bytes each, so image i cannot be read without decoding those before it;
  entropy      variants with rate_weight > 0: integer latents range-coded (constriction) under the model's
               learned Laplace prior; the default for such variants.
Stream (little-endian): magic "CNZ1" | mode u8 | model sha256[:8] | n u32 | dim u16 | side info |
payload bytes u32 | payload | crc32 u32 of everything before it. Everything needed to decode except the
model weights is in the stream, so bytes per image = file size / n.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import constriction
import numpy as np
import torch

from pipeline.lib.config import IMAGE_SIZE
from pipeline.lib.encoding import BATCH
from pipeline.lib.io import sha256_file
from pipeline.lib.models import SYMBOL_LIMIT
from pipeline.lib.quantize import calibrate_uint8, dequantize_uint8, to_uint8, uint8_codes

MAGIC = b"CNZ1"
MODES = {"uint8": 0, "entropy": 1, "uint8_range": 2}
# float32 side information, rows of one value per latent dimension: uint8: grid lo, hi; uint8_range: lo, hi,
# code mean, code spread; entropy: none (its coding model is the model's prior)
SIDE_ROWS = {"uint8": 2, "entropy": 0, "uint8_range": 4}
MIN_CODE_STD = 0.5  # uint8_range: the Gaussian of a (near-)constant dimension stays a valid coding model
HEADER = struct.Struct("<4sB8sIH")  # magic, mode, model id, images, latent dim
# The most latents one stream may hold (images x latent dim): decoding allocates a few arrays of this many values,
# so a header claiming more is refused before any allocation (2**24 = 262,144 images of 64 dimensions).
MAX_LATENTS = 2**24


class CodecError(ValueError):
    """A stream that cannot be decoded (corrupt, truncated, another model) or a bad input."""


def model_id(model_file: Path) -> bytes:
    return bytes.fromhex(sha256_file(model_file))[:8]


@torch.no_grad()
def decode_images(model, latents: torch.Tensor) -> np.ndarray:
    """Latents -> uint8 (N, 28, 28) images, in fixed batches so the same latents always give the same bytes."""
    device = next(model.parameters()).device
    out = [model.decode(latents[i : i + BATCH].to(device)).float().cpu() for i in range(0, len(latents), BATCH)]
    return to_uint8(torch.cat(out)) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def _require_prior(model) -> None:
    if model.prior is None:
        description = model.spec.description or "this one"
        raise CodecError(f"mode entropy needs a variant with rate_weight > 0 ({description} has none)")


def _prior_family(model, n: int):
    _require_prior(model)
    with torch.no_grad():
        loc, scale = model.prior.loc.double().cpu().numpy(), model.prior.scale().double().cpu().numpy()
    family = constriction.stream.model.QuantizedLaplace(-SYMBOL_LIMIT, SYMBOL_LIMIT)
    return family, np.tile(loc, n), np.tile(scale, n)


def _code_gaussian(side: np.ndarray, n: int):
    """uint8_range's coding model: side rows 2 and 3 are each dimension's code mean and spread."""
    family = constriction.stream.model.QuantizedGaussian(0, 255)
    return family, np.tile(side[2].astype(np.float64), n), np.tile(side[3].astype(np.float64), n)


def pack(model, model_file: Path, latents: torch.Tensor, mode: str, calibration=None) -> bytes:
    """encode_latents() output -> one stream. calibration: (lo, hi) of the uint8 grid (default: these latents'
    range), for the uint8 and uint8_range modes."""
    n, dim = latents.shape
    if mode == "entropy":
        side, payload = np.zeros((0, dim), np.float32), _range_code(latents.numpy(), *_prior_family(model, n))
    else:
        lo, hi = calibration if calibration is not None else calibrate_uint8(latents)
        codes, side = uint8_codes(latents, lo, hi), np.stack([lo, hi])
        payload = codes.tobytes()
        if mode == "uint8_range":
            spread = np.maximum(codes.std(0, dtype=np.float64), MIN_CODE_STD) if n else np.ones(dim)
            centre = codes.mean(0, dtype=np.float64) if n else np.zeros(dim)
            side = np.concatenate([side, [centre, spread]]).astype(np.float32)
            payload = _range_code(codes, *_code_gaussian(side, n))
    head = HEADER.pack(MAGIC, MODES[mode], model_id(model_file), n, dim)
    body = head + side.astype("<f4").tobytes() + struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _range_code(symbols: np.ndarray, family, loc: np.ndarray, scale: np.ndarray) -> bytes:
    coder = constriction.stream.queue.RangeEncoder()
    coder.encode(symbols.astype(np.int32).ravel(), family, loc, scale)
    return coder.get_compressed().astype("<u4").tobytes()


def _range_decode(payload: bytes, family, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4").astype(np.uint32))
    symbols = decoder.decode(family, loc, scale)
    # Encoding is deterministic, so a payload that holds exactly the header's count of latents re-encodes to
    # itself; one with more or fewer does not (the decoder's own end-of-data check misses some of those)
    if _range_code(symbols, family, loc, scale) != payload:
        raise CodecError(
            f"stream lengths do not add up: the {len(payload)}-byte payload does not hold {len(loc)} latents"
        )
    return symbols


def standalone_entropy_bytes(model, latents: torch.Tensor) -> np.ndarray:
    """Size of each image's own entropy stream (header, payload and checksum), as if stored one file per image."""
    overhead = HEADER.size + 4 + 4  # header, payload length, crc32
    return np.array(
        [overhead + len(_range_code(latents[i : i + 1].numpy(), *_prior_family(model, 1))) for i in range(len(latents))]
    )


def unpack(model, model_file: Path, stream: bytes) -> tuple[str, torch.Tensor]:
    """Stream -> (mode, latents), checking integrity and that the stream was made by this model."""
    if len(stream) < HEADER.size + 8 or stream[:4] != MAGIC:
        raise CodecError("not a CompressNet stream (bad magic or too short)")
    magic, mode_code, stream_model, n, dim = HEADER.unpack_from(stream)
    if zlib.crc32(stream[:-4]) != struct.unpack("<I", stream[-4:])[0]:
        raise CodecError(f"corrupt or truncated stream: checksum mismatch ({len(stream)} bytes)")
    if stream_model != model_id(model_file):
        raise CodecError(
            f"stream was made by model {stream_model.hex()}, not by {model_file} ({model_id(model_file).hex()})"
        )
    mode = {code: name for name, code in MODES.items()}.get(mode_code)
    if mode is None or dim != model.spec.latent_dim:
        raise CodecError(f"stream header does not match the model (mode {mode_code}, latent dim {dim})")
    offset = HEADER.size + 4 * dim * SIDE_ROWS[mode]
    if len(stream) < offset + 8:
        raise CodecError(
            f"stream lengths do not add up: a {mode} stream of {dim} dims needs more than {len(stream)} bytes"
        )
    side = np.frombuffer(stream[HEADER.size : offset], "<f4").reshape(SIDE_ROWS[mode], dim)
    _check_side(mode, side)
    (size,) = struct.unpack_from("<I", stream, offset)
    payload_fits = size == n * dim if mode == "uint8" else size % 4 == 0  # one byte per code | 32-bit words
    if offset + 4 + size + 4 != len(stream) or not payload_fits:
        raise CodecError(
            f"stream lengths do not add up: payload {size} bytes for {n} images x {dim} dims "
            f"in a {len(stream)}-byte {mode} stream"
        )
    if mode == "entropy":
        _require_prior(model)
    _check_count(mode, n, dim, size, side, model)
    payload = stream[offset + 4 : offset + 4 + size]
    if mode == "entropy":
        symbols = _range_decode(payload, *_prior_family(model, n))
        return mode, torch.from_numpy(symbols.astype(np.float32)).reshape(n, dim)
    if mode == "uint8":
        codes = np.frombuffer(payload, np.uint8).reshape(n, dim).copy()
    else:
        codes = _range_decode(payload, *_code_gaussian(side, n)).astype(np.uint8).reshape(n, dim)
    return mode, dequantize_uint8(codes, side[0].copy(), side[1].copy())


def _check_count(mode: str, n: int, dim: int, size: int, side: np.ndarray, model) -> None:
    """Refuse a header whose image count no real stream of this size could hold, before anything is allocated:
    more than MAX_LATENTS latents, or more codes than the payload's bits can carry, each code costing at least
    -log2 of the most probable bin of its coding model."""
    if n * dim > MAX_LATENTS:
        raise CodecError(f"stream claims {n} images x {dim} dims, more than the {MAX_LATENTS} latents it may hold")
    if mode != "uint8" and n * _min_bits_per_image(mode, side, model) > 8 * size + 64:  # 64: the coder's last state
        raise CodecError(f"stream lengths do not add up: {n} images need more than its {size}-byte payload")


def _min_bits_per_image(mode: str, side: np.ndarray, model) -> float:
    """The fewest bits any image can take: -log2 of each dimension's most probable bin, summed. A bin holds at most
    the mass around the mode, or a tail gathered into an edge bin."""
    if mode == "uint8_range":
        spread = side[3].astype(np.float64) * math.sqrt(2)
        top = [max(math.erf(0.5 / s), 0.5 * math.erfc(-0.5 / s)) for s in spread]
    else:
        with torch.no_grad():
            loc, scale = model.prior.loc.double().cpu().numpy(), model.prior.scale().double().cpu().numpy()
        edge = 0.5 * np.exp(-np.maximum(SYMBOL_LIMIT - 0.5 - np.abs(loc), 0) / scale)
        top = np.maximum(1 - np.exp(-0.5 / scale), edge)
    return float(-np.log2(np.clip(top, 1e-300, 1.0)).sum())


def _check_side(mode: str, side: np.ndarray) -> None:
    """What pack() always writes: finite values, lo <= hi, code means on the grid and spreads >= MIN_CODE_STD (the
    range coder cannot take a zero spread)."""
    valid = bool(np.isfinite(side).all())
    if mode != "entropy":
        valid &= bool((side[0] <= side[1]).all())
    if mode == "uint8_range":
        valid &= bool(((side[2] >= 0) & (side[2] <= 255) & (side[3] >= MIN_CODE_STD)).all())
    if not valid:
        raise CodecError(f"stream side information is invalid for mode {mode} (not what any compressor writes)")
