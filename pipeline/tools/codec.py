"""The compressor's command line: images -> CNZ1 bitstream -> images, with a trained variant's model.

  python -m pipeline.tools.codec compress <variant> <input> <out file> [--seed N] [--mode uint8|uint8_range|entropy]
  python -m pipeline.tools.codec decompress <variant> <in file> <out dir> [--seed N]

<input> is an IDX image file in EMNIST's raw (transposed) layout, gzip or plain, or a directory of 28x28
grayscale PNGs (upright, sorted by name); decompress writes 000000.png, 000001.png, ... The model is
models/<variant>-seed<N>.pt (default seed: the first of `seeds:`). The stream format and the modes: docs/codec.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import paths
from pipeline.cli import os_error_line
from pipeline.lib import codec, encoding
from pipeline.lib.codec import CodecError
from pipeline.lib.config import IMAGE_SIZE, ConfigError, Params, load_params, run_name
from pipeline.lib.device import configure_compute, pick_device
from pipeline.lib.idx import read_idx
from pipeline.lib.io import DataError, atomic_write
from pipeline.lib.models import load_model
from pipeline.lib.refine import refine_latents


def read_images(path: Path) -> np.ndarray:
    """An IDX image file (EMNIST raw layout) or a directory of 28x28 grayscale PNGs -> uint8 (N, 28, 28) upright."""
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise CodecError(f"{path}: no .png files")
        return np.stack([read_png(f) for f in files])
    images = read_idx(path, "images")
    if not len(images):
        raise CodecError(f"{path}: holds no images")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise CodecError(f"{path}: expected {IMAGE_SIZE}x{IMAGE_SIZE} images, got {images.shape[1:]}")
    return np.ascontiguousarray(images.transpose(0, 2, 1))


def read_png(path: Path) -> np.ndarray:
    """One 28x28 PNG as uint8 grayscale; its size is checked from the header, before any pixel is decoded."""
    try:
        with Image.open(path, formats=["PNG"]) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise CodecError(
                    f"{path}: expected {IMAGE_SIZE}x{IMAGE_SIZE} pixels, got {image.size[0]}x{image.size[1]}"
                )
            return _grayscale(image, path)
    except (Image.UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as err:
        raise CodecError(f"{path}: not a readable PNG ({err})") from None


def _grayscale(image: Image.Image, path: Path) -> np.ndarray:
    """uint8 grey levels: 16-bit PNGs scaled down, not clipped to black and white; transparency refused, since what
    shows through it is not in the file."""
    if image.mode.startswith("I"):  # 16-bit grayscale ("I;16", or "I" holding 0..65535), perhaps a key level
        levels = np.asarray(image, dtype=np.uint32)
        transparent = "transparency" in image.info and bool((levels == image.info["transparency"]).any())
        grey = (levels >> 8).astype(np.uint8)
    else:
        if image.has_transparency_data:  # an alpha channel, or a palette index or key colour marked transparent
            image = image.convert("RGBA")
        transparent = "A" in image.getbands() and image.getchannel("A").getextrema()[0] < 255
        grey = np.asarray(image.convert("L"))
    if transparent:
        raise CodecError(f"{path}: has transparent pixels; save it as an opaque grayscale PNG")
    return grey


def write_images(images: np.ndarray, out_dir: Path) -> None:
    """PNGs 000000.png, ... into a new directory, written beside it and renamed: never half there."""
    out_dir = out_dir.resolve()  # "." has no name to write beside
    if Path.cwd().is_relative_to(out_dir):  # the rename would swap the directory out from under this shell
        raise CodecError(f"{out_dir}: the working directory or one holding it; choose a new directory")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CodecError(f"{out_dir}: exists and is not an empty directory; choose a new one")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))  # its own
    try:
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp / f"{i:06d}.png")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def compress(params: Params, variant: str, seed: int, source: Path, out: Path, mode: str | None) -> int:
    model_file, model, saved = _model(params, variant, seed)
    mode = mode or ("entropy" if model.prior is not None else "uint8")
    images = read_images(source)
    latents, calibration = encoding.encode_latents(model, images), None
    if mode != "entropy":
        calibration = encoding.saved_calibration(model, saved, paths.prepared_dir())
        latents = refine_latents(model, images, latents, params.codec, calibration)
    stream = codec.pack(model, model_file, latents, mode, calibration)
    atomic_write(out, lambda tmp: tmp.write_bytes(stream))
    return len(stream)


def decompress(params: Params, variant: str, seed: int, source: Path, out_dir: Path) -> int:
    model_file, model, _ = _model(params, variant, seed)
    _, latents = codec.unpack(model, model_file, source.read_bytes())
    images = codec.decode_images(model, latents)
    write_images(images, out_dir)
    return len(images)


def _model(params: Params, variant: str, seed: int):
    model_file, compute = paths.model_file(run_name(variant, seed)), params.compute_for(variant)
    configure_compute(compute.threads)  # refinement runs backward passes
    model, saved = load_model(model_file, pick_device(compute.device))
    return model_file, model, saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.codec", description=__doc__.splitlines()[0])
    params_help = "the params file (default: params.yaml at the project root)"
    parser.add_argument("--params", help=params_help)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("compress", "decompress"):
        sub = commands.add_parser(name)
        # also after the command; SUPPRESS keeps a --params given before it
        sub.add_argument("--params", default=argparse.SUPPRESS, help=params_help)
        sub.add_argument("variant")
        sub.add_argument("source", type=Path)
        sub.add_argument("out", type=Path)
        sub.add_argument("--seed", type=int, help="which trained run (default: the first of `seeds:`)")
        if name == "compress":
            sub.add_argument("--mode", choices=list(codec.MODES), help="default: entropy if the variant has a prior")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params or paths.params_file())
        params.variant(args.variant)
        seed = params.seeds[0] if args.seed is None else args.seed
        if args.command == "compress":
            size = compress(params, args.variant, seed, args.source, args.out, args.mode)
            print(f"codec: wrote {args.out} ({size} bytes)")
        else:
            count = decompress(params, args.variant, seed, args.source, args.out)
            print(f"codec: wrote {count} images to {args.out}")
    except (CodecError, ConfigError, DataError) as err:
        print(f"codec: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk names no file: the output it was writing
        print(
            f"codec: error: {os_error_line(err) if err.filename else f'{args.out}: {err.strerror or err}'}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:  # nothing half-written is left: the outputs are renamed into place when complete
        print("codec: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("codec: error: out of memory (the input is larger than this machine can hold)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
