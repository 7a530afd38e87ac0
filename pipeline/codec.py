"""A real compressor built from a trained variant: images -> bitstream -> images.

  python -m pipeline.codec compress <variant> <input> <out file> [--seed N] [--mode uint8|uint8_range|entropy]
  python -m pipeline.codec decompress <variant> <in file> <out dir> [--seed N]

<input> is an IDX image file in EMNIST's raw (transposed) layout, gzip or plain, or a directory of 28x28
grayscale PNGs (upright, sorted by name); decompress writes 000000.png, 000001.png, ... The model is
models/<variant>-seed<N>.pt. Modes:
  uint8        any variant: each latent dimension as one byte, scale/offset calibrated on the train split and
               carried in the stream (8 bytes per dimension). With codec.refine_steps > 0 in params.yaml the
               encoder's latents are first refined against the decoder (pipeline.refine): slower to compress,
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

import argparse
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import constriction
import numpy as np
import torch
from PIL import Image

from pipeline import data, refine
from pipeline.config import IMAGE_SIZE, PARAMS_FILE, ConfigError, load_params, run_name
from pipeline.models import SYMBOL_LIMIT, load_model
from pipeline.prepare import PREPARED_DIR
from pipeline.device import configure_determinism, pick_device
from pipeline.train import MODELS_DIR, as_batch_tensor

MAGIC = b"CNZ1"
MODES = {"uint8": 0, "entropy": 1, "uint8_range": 2}
# float32 side information, rows of one value per latent dimension: uint8: grid lo, hi; uint8_range: lo, hi,
# code mean, code spread; entropy: none (its coding model is the model's prior)
SIDE_ROWS = {"uint8": 2, "entropy": 0, "uint8_range": 4}
MIN_CODE_STD = 0.5  # uint8_range: the Gaussian of a (near-)constant dimension stays a valid coding model
HEADER = struct.Struct("<4sB8sIH")  # magic, mode, model id, images, latent dim
BATCH = 2048


class CodecError(ValueError):
    """A stream that cannot be decoded (corrupt, truncated, another model) or a bad input."""


def model_id(model_file: Path) -> bytes:
    return bytes.fromhex(data.sha256_file(model_file))[:8]


@torch.no_grad()
def encode_latents(model, images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) upright images -> the latent the decoder sees at test time (float32, CPU)."""
    device = next(model.parameters()).device
    x = as_batch_tensor(images, device).contiguous(memory_format=torch.channels_last)
    return torch.cat([model.encode(x[i:i + BATCH]).float().cpu() for i in range(0, len(x), BATCH)])


@torch.no_grad()
def decode_images(model, latents: torch.Tensor) -> np.ndarray:
    """Latents -> uint8 (N, 28, 28) images, in fixed batches so the same latents always give the same bytes."""
    device = next(model.parameters()).device
    out = [model.decode(latents[i:i + BATCH].to(device)).float().cpu() for i in range(0, len(latents), BATCH)]
    return to_uint8(torch.cat(out)) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def calibrate_uint8(latents: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension range (lo, hi) of latents, as float32: the uint8 grid spans it."""
    return latents.min(0).values.numpy().astype(np.float32), latents.max(0).values.numpy().astype(np.float32)


def train_calibration(model, prepared: Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 grid of a model: its latents' range over the prepared train split (evaluate and compress agree)."""
    return calibrate_uint8(encode_latents(model, data.load_split(prepared, "train")[0]))


def uint8_codes(latents: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    scale = _uint8_scale(lo, hi)
    return torch.clamp(torch.round((latents - torch.from_numpy(lo)) / scale), 0, 255).to(torch.uint8).numpy()


def dequantize_uint8(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(codes).float() * _uint8_scale(lo, hi) + torch.from_numpy(lo)


def _uint8_scale(lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    lo, hi = torch.from_numpy(lo), torch.from_numpy(hi)
    return torch.where(hi > lo, (hi - lo) / 255, torch.ones_like(hi))


def _prior_family(model, n: int):
    if model.prior is None:
        raise CodecError(f"mode entropy needs a variant with rate_weight > 0 ({model.spec.description or 'this one'} has none)")
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
        raise CodecError(f"stream lengths do not add up: the {len(payload)}-byte payload does not hold "
                         f"{len(loc)} latents")
    return symbols


def standalone_entropy_bytes(model, latents: torch.Tensor) -> np.ndarray:
    """Size of each image's own entropy stream (header, payload and checksum), as if stored one file per image."""
    overhead = HEADER.size + 4 + 4  # header, payload length, crc32
    return np.array([overhead + len(_range_code(latents[i:i + 1].numpy(), *_prior_family(model, 1)))
                     for i in range(len(latents))])


def unpack(model, model_file: Path, stream: bytes) -> tuple[str, torch.Tensor]:
    """Stream -> (mode, latents), checking integrity and that the stream was made by this model."""
    if len(stream) < HEADER.size + 8 or stream[:4] != MAGIC:
        raise CodecError("not a CompressNet stream (bad magic or too short)")
    magic, mode_code, stream_model, n, dim = HEADER.unpack_from(stream)
    if zlib.crc32(stream[:-4]) != struct.unpack("<I", stream[-4:])[0]:
        raise CodecError(f"corrupt or truncated stream: checksum mismatch ({len(stream)} bytes)")
    if stream_model != model_id(model_file):
        raise CodecError(f"stream was made by model {stream_model.hex()}, not by {model_file} ({model_id(model_file).hex()})")
    mode = {code: name for name, code in MODES.items()}.get(mode_code)
    if mode is None or dim != model.spec.latent_dim:
        raise CodecError(f"stream header does not match the model (mode {mode_code}, latent dim {dim})")
    offset = HEADER.size + 4 * dim * SIDE_ROWS[mode]
    if len(stream) < offset + 8:
        raise CodecError(f"stream lengths do not add up: a {mode} stream of {dim} dims needs more than "
                         f"{len(stream)} bytes")
    side = np.frombuffer(stream[HEADER.size:offset], "<f4").reshape(SIDE_ROWS[mode], dim)
    _check_side(mode, side)
    (size,) = struct.unpack_from("<I", stream, offset)
    payload_fits = size == n * dim if mode == "uint8" else size % 4 == 0  # one byte per code | 32-bit words
    if offset + 4 + size + 4 != len(stream) or not payload_fits:
        raise CodecError(f"stream lengths do not add up: payload {size} bytes for {n} images x {dim} dims "
                         f"in a {len(stream)}-byte {mode} stream")
    payload = stream[offset + 4:offset + 4 + size]
    if mode == "entropy":
        symbols = _range_decode(payload, *_prior_family(model, n))
        return mode, torch.from_numpy(symbols.astype(np.float32)).reshape(n, dim)
    if mode == "uint8":
        codes = np.frombuffer(payload, np.uint8).reshape(n, dim).copy()
    else:
        codes = _range_decode(payload, *_code_gaussian(side, n)).astype(np.uint8).reshape(n, dim)
    return mode, dequantize_uint8(codes, side[0].copy(), side[1].copy())


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


def read_images(path: Path) -> np.ndarray:
    """An IDX image file (EMNIST raw layout) or a directory of 28x28 grayscale PNGs -> uint8 (N, 28, 28) upright."""
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise CodecError(f"{path}: no .png files")
        images = [np.asarray(Image.open(f).convert("L")) for f in files]
        bad = next((f for f, im in zip(files, images) if im.shape != (IMAGE_SIZE, IMAGE_SIZE)), None)
        if bad is not None:
            raise CodecError(f"{bad}: expected {IMAGE_SIZE}x{IMAGE_SIZE} pixels")
        return np.stack(images)
    images = data.read_idx(path, "images")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise CodecError(f"{path}: expected {IMAGE_SIZE}x{IMAGE_SIZE} images, got {images.shape[1:]}")
    return np.ascontiguousarray(images.transpose(0, 2, 1))


def write_images(images: np.ndarray, out_dir: Path) -> None:
    """PNGs 000000.png, ... into a new directory, written beside it and renamed: never half there."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CodecError(f"{out_dir}: exists and is not an empty directory; choose a new one")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp / f"{i:06d}.png")
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(tmp, out_dir)


def compress(params, variant: str, seed: int, source: Path, out: Path, mode: str | None,
             models_dir: Path = MODELS_DIR, prepared: Path = PREPARED_DIR) -> int:
    model_file, model = _model(params, variant, seed, models_dir)
    mode = mode or ("entropy" if model.prior is not None else "uint8")
    images = read_images(source)
    latents = encode_latents(model, images)
    calibration = train_calibration(model, prepared) if mode != "entropy" else None
    if calibration is not None:
        latents = refine.refine_latents(model, images, latents, params.codec, calibration)
    stream = pack(model, model_file, latents, mode, calibration)
    data.atomic_write(out, lambda tmp: tmp.write_bytes(stream))
    return len(stream)


def decompress(params, variant: str, seed: int, source: Path, out_dir: Path, models_dir: Path = MODELS_DIR) -> int:
    model_file, model = _model(params, variant, seed, models_dir)
    _, latents = unpack(model, model_file, source.read_bytes())
    images = decode_images(model, latents)
    write_images(images, out_dir)
    return len(images)


def _model(params, variant: str, seed: int, models_dir: Path):
    model_file = models_dir / f"{run_name(variant, seed)}.pt"
    configure_determinism(params.train_for(variant))  # refinement runs backward passes
    model, _ = load_model(model_file, pick_device(params.train_for(variant).device))
    return model_file, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.codec", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_FILE))
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("compress", "decompress"):
        sub = commands.add_parser(name)
        sub.add_argument("variant")
        sub.add_argument("source", type=Path)
        sub.add_argument("out", type=Path)
        sub.add_argument("--seed", type=int, help="which trained run (default: the first of `seeds:`)")
        if name == "compress":
            sub.add_argument("--mode", choices=list(MODES), help="default: entropy if the variant has a prior")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        params.variant(args.variant)
        seed = params.seeds[0] if args.seed is None else args.seed
        if args.command == "compress":
            size = compress(params, args.variant, seed, args.source, args.out, args.mode, MODELS_DIR, PREPARED_DIR)
            print(f"codec: wrote {args.out} ({size} bytes)")
        else:
            count = decompress(params, args.variant, seed, args.source, args.out, MODELS_DIR)
            print(f"codec: wrote {count} images to {args.out}")
    except (CodecError, ConfigError, data.DataError, OSError) as err:
        print(f"codec: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
