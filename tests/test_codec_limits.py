"""Streams, IDX files and PNGs from places a user does not control cannot exhaust memory: every size they claim
is checked against what they hold, and against a documented limit, before anything is allocated."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.lib import codec, idx
from pipeline.lib.config import VariantSpec
from pipeline.lib.io import DataError
from pipeline.lib.models import build_model
from pipeline.tools import codec as codec_cli
from tests.conftest import TINY_SPEC
from tests.fakedata import idx_bytes


@pytest.fixture(scope="module")
def model_and_file(tmp_path_factory):
    torch.manual_seed(0)
    spec = {**TINY_SPEC, "rate_weight": 0.01}
    model = build_model(VariantSpec(**spec)).eval()
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    torch.save({"spec": spec, "state_dict": model.state_dict()}, path)
    return model, path


def stream_for(model, path, mode: str, n: int = 40) -> bytes:
    latents = model.encode(torch.rand(n, 1, 28, 28)).detach()
    return codec.pack(model, path, latents, mode)


def forge_count(stream: bytes, n: int, payload: bytes | None = None) -> bytes:
    """The same stream with another image count in its header (and optionally another payload), checksum fixed."""
    magic, mode, model_id, _, dim = codec.HEADER.unpack_from(stream)
    side_end = codec.HEADER.size + 4 * dim * codec.SIDE_ROWS[{v: k for k, v in codec.MODES.items()}[mode]]
    (size,) = struct.unpack_from("<I", stream, side_end)
    payload = stream[side_end + 4 : side_end + 4 + size] if payload is None else payload
    body = codec.HEADER.pack(magic, mode, model_id, n, dim) + stream[codec.HEADER.size : side_end]
    body += struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("mode", ["uint8_range", "entropy"])
def test_a_huge_image_count_is_refused_before_allocating(mode, model_and_file, monkeypatch):
    model, path = model_and_file
    bomb = forge_count(stream_for(model, path, mode), 10**8, payload=b"")
    allocated = []
    monkeypatch.setattr(np, "tile", lambda a, n: allocated.append(n) or np.zeros(0))
    # a prior so sharp that an image may cost no bits: the payload's size cannot refuse the count, the cap must
    monkeypatch.setattr(codec, "_min_bits_per_image", lambda *args: 0.0)
    with pytest.raises(codec.CodecError, match=f"more than the {codec.MAX_LATENTS} latents it may hold"):
        codec.unpack(model, path, bomb)
    assert allocated == []


def test_more_images_than_the_payload_can_hold_are_refused(model_and_file):
    model, path = model_and_file
    stream = stream_for(model, path, "uint8_range", n=40)
    with pytest.raises(codec.CodecError, match="payload"):
        codec.unpack(model, path, forge_count(stream, 40_000))


def test_honest_streams_still_decode(model_and_file):
    model, path = model_and_file
    for mode in codec.MODES:
        assert codec.unpack(model, path, stream_for(model, path, mode))[1].shape == (40, TINY_SPEC["latent_dim"])


def test_the_cli_turns_memory_errors_into_one_line(monkeypatch, capsys, tmp_path):
    def exhausted(*args):
        raise MemoryError

    monkeypatch.setattr(codec_cli, "decompress", exhausted)
    monkeypatch.setattr(codec_cli, "load_params", lambda path: type("P", (), {"variant": len, "seeds": [0]})())
    assert codec_cli.main(["decompress", "model01", str(tmp_path / "in.cnz"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("codec: error: out of memory") and err.count("\n") == 1


def test_a_gzip_bomb_idx_file_stops_at_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 10_000)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(idx_bytes(np.zeros((100, 28, 28), np.uint8))))  # 78 kB from a few hundred bytes
    with pytest.raises(DataError, match="decompresses to more than 10000 bytes"):
        idx.read_idx(bomb, "images")


def test_idx_dimensions_that_overflow_are_an_error(tmp_path):
    header = (2051).to_bytes(4, "big") + b"".join((2**32 - 1).to_bytes(4, "big") for _ in range(3))
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(header + bytes(16))
    with pytest.raises(DataError, match="header says"):
        idx.read_idx(path, "images")


def test_only_png_files_of_the_right_size_are_decoded(tmp_path, monkeypatch):
    not_png, too_big, fine = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(not_png, format="JPEG")
    Image.fromarray(np.zeros((28, 29), np.uint8)).save(too_big)
    Image.fromarray(np.full((28, 28), 7, np.uint8)).save(fine)
    with pytest.raises(codec.CodecError, match="not a readable PNG"):
        codec_cli.read_png(not_png)
    with pytest.raises(codec.CodecError, match="expected 28x28 pixels, got 29x28"):
        codec_cli.read_png(too_big)
    assert codec_cli.read_png(fine).tolist() == np.full((28, 28), 7).tolist()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's decompression-bomb guard, made strict
    with pytest.raises(codec.CodecError, match="not a readable PNG"):
        codec_cli.read_png(fine)


def test_images_that_cannot_all_be_written_leave_nothing_behind(tmp_path, monkeypatch):
    save = Image.Image.save

    def disk_fills_after_one(image, path, *args, **kwargs):
        if path.name != "000000.png":
            raise OSError(28, "No space left on device")
        save(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_fills_after_one)
    with pytest.raises(OSError, match="No space left"):
        codec_cli.write_images(np.zeros((3, 28, 28), np.uint8), tmp_path / "decoded")
    assert list(tmp_path.iterdir()) == []


def test_a_16_bit_png_keeps_its_grey_levels_and_a_transparent_one_is_refused(tmp_path):
    levels = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) % 256
    deep = tmp_path / "deep.png"
    Image.fromarray(levels * 257).save(deep)  # 16 bits per pixel: 0..65535
    assert codec_cli.read_png(deep).tolist() == levels.tolist()
    glyph_in_alpha = tmp_path / "alpha.png"
    Image.fromarray(np.dstack([np.zeros((28, 28), np.uint8), levels.astype(np.uint8)]), mode="LA").save(glyph_in_alpha)
    with pytest.raises(codec.CodecError, match="has transparent pixels; save it as an opaque grayscale PNG"):
        codec_cli.read_png(glyph_in_alpha)
    deep_keyed = tmp_path / "deep-keyed.png"  # 16 bits, level 0 marked transparent
    Image.fromarray(levels * 257).save(deep_keyed, transparency=0)
    with pytest.raises(codec.CodecError, match="has transparent pixels"):
        codec_cli.read_png(deep_keyed)
    keyed = tmp_path / "keyed.png"  # a palette image whose index 0 is transparent: no alpha channel to see
    palette = Image.fromarray((levels % 2).astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.save(keyed, transparency=0)
    with pytest.raises(codec.CodecError, match="has transparent pixels"):
        codec_cli.read_png(keyed)
    opaque = tmp_path / "opaque.png"
    Image.fromarray(np.full((28, 28, 4), 255, np.uint8), mode="RGBA").save(opaque)
    assert codec_cli.read_png(opaque).min() == 255


def test_writing_images_leaves_a_directory_of_a_similar_name_alone(tmp_path):
    mine = tmp_path / "decoded.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    codec_cli.write_images(np.zeros((2, 28, 28), np.uint8), tmp_path / "decoded")
    assert (mine / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoded", "decoded.partial"]
    assert sorted(p.name for p in (tmp_path / "decoded").iterdir()) == ["000000.png", "000001.png"]


def test_ctrl_c_and_a_full_disk_are_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(codec_cli, "load_params", lambda path: type("P", (), {"variant": len, "seeds": [0]})())
    argv = ["compress", "model01", str(tmp_path / "in"), str(tmp_path / "out.cnz")]
    for error, code, line in [
        (KeyboardInterrupt(), 130, "codec: interrupted\n"),
        (OSError(28, "No space left on device"), 1, f"codec: error: {tmp_path / 'out.cnz'}: No space left on device\n"),
    ]:
        monkeypatch.setattr(codec_cli, "compress", lambda *args, error=error: (_ for _ in ()).throw(error))
        assert codec_cli.main(argv) == code
        assert capsys.readouterr().err == line
