"""The codec's errors (pipeline.lib.codec and its CLI pipeline.tools.codec) on the codec tests' tiny trained
models (tests/codec_support.py): damaged and forged streams, wrong models, bad inputs and outputs, one-line CLI
errors."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.lib import codec
from pipeline.lib.models import MISSING_MODEL
from pipeline.tools import codec as codec_tool
from tests.codec_support import RATE_SPEC, model_of, model_path, round_trip
from tests.fakedata import write_idx

pytestmark = pytest.mark.usefixtures("codec_root")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s[: len(s) // 2], "truncated"),
        (lambda s: s[:40] + bytes([s[40] ^ 0x10]) + s[41:], "checksum mismatch"),
        (lambda s: b"JUNK" + s[4:], "not a CompressNet stream"),
        (lambda s: b"", "not a CompressNet stream"),
    ],
)
@pytest.mark.parametrize("name, mode", [("coded", None), ("plain", "uint8_range")])
def test_a_damaged_stream_is_a_clear_error(codec_project, tmp_path, damage, message, name, mode):
    stream, _ = round_trip(codec_project, name, tmp_path, mode=mode)
    stream.write_bytes(damage(stream.read_bytes()))
    with pytest.raises(codec.CodecError, match=message):
        codec_tool.decompress(codec_project["params"], name, 0, stream, tmp_path / "out")


def resealed(body: bytes) -> bytes:
    """A forged stream body with a valid checksum: only the decoder's own checks can catch it."""
    return body + struct.pack("<I", zlib.crc32(body))


# uint8_range side rows: lo, hi, code mean, code spread; the range coder cannot take a zero spread
@pytest.mark.parametrize("row, value", [(3, 0.0), (2, float("nan")), (0, float("inf"))])
def test_forged_side_information_is_a_clear_error(codec_project, tmp_path, row, value):
    stream, _ = round_trip(codec_project, "plain", tmp_path, mode="uint8_range")
    body, dim = bytearray(stream.read_bytes()[:-4]), model_of("plain").spec.latent_dim
    struct.pack_into("<f", body, codec.HEADER.size + 4 * (row * dim), value)
    stream.write_bytes(resealed(bytes(body)))
    with pytest.raises(codec.CodecError, match="side information is invalid"):
        codec_tool.decompress(codec_project["params"], "plain", 0, stream, tmp_path / "out")


def test_a_stream_too_short_for_its_modes_side_information_is_a_clear_error(codec_project, tmp_path):
    stream, _ = round_trip(codec_project, "plain", tmp_path, mode="uint8")
    body = bytearray(stream.read_bytes()[:-4])
    body[4] = codec.MODES["uint8_range"]  # twice the side information uint8 carries
    stream.write_bytes(resealed(bytes(body[: codec.HEADER.size + 8])))
    with pytest.raises(codec.CodecError, match="lengths do not add up"):
        codec_tool.decompress(codec_project["params"], "plain", 0, stream, tmp_path / "out")


# a checksum-valid stream whose header lies: one image more or fewer than the payload holds (n sits after magic,
# mode and model id), or a range-coded payload 4 bytes longer than the stream has (its length follows the side info)
@pytest.mark.parametrize(
    "name, mode, field_at, change",
    [
        ("plain", "uint8", 13, 1),
        ("coded", "entropy", None, 4),
        ("plain", "uint8_range", None, 4),
        ("coded", "entropy", 13, 1),
        ("plain", "uint8_range", 13, 1),
        ("plain", "uint8_range", 13, -1),
    ],
)
def test_a_stream_whose_lengths_disagree_is_a_clear_error_even_with_a_valid_checksum(
    codec_project, tmp_path, name, mode, field_at, change
):
    stream, _ = round_trip(codec_project, name, tmp_path, mode=mode)
    body = stream.read_bytes()[:-4]
    field_at = field_at or codec.HEADER.size + 4 * codec.SIDE_ROWS[mode] * model_of(name).spec.latent_dim
    value = struct.unpack_from("<I", body, field_at)[0]
    stream.write_bytes(resealed(body[:field_at] + struct.pack("<I", value + change) + body[field_at + 4 :]))
    with pytest.raises(codec.CodecError, match="lengths do not add up"):
        codec_tool.decompress(codec_project["params"], name, 0, stream, tmp_path / "out")


def test_a_stream_from_another_model_is_refused(codec_project, tmp_path):
    stream, _ = round_trip(codec_project, "plain", tmp_path)
    with pytest.raises(codec.CodecError, match="made by model"):
        codec_tool.decompress(codec_project["params"], "coded", 0, stream, tmp_path / "out")


def test_entropy_mode_needs_a_prior(codec_project, tmp_path):
    with pytest.raises(codec.CodecError, match="rate_weight > 0"):
        round_trip(codec_project, "plain", tmp_path, mode="entropy")


def test_cli_round_trips_and_reports_errors_in_one_line(codec_project, tmp_path, capsys):
    params_file = tmp_path / "params.yaml"  # seeds [3, 0]: without --seed the CLI takes the first, never trained here
    params_file.write_text(
        f"seeds: [3, 0]\nvariants: {{coded: {RATE_SPEC}}}\nmlflow: {{log_model: false}}\n".replace("'", "")
    )
    cli = ["--params", str(params_file)]
    stream, out = tmp_path / "x.cnz", tmp_path / "o"
    assert codec_tool.main([*cli, "compress", "coded", str(codec_project["idx"]), str(stream), "--seed", "0"]) == 0
    assert capsys.readouterr().out == f"codec: wrote {stream} ({stream.stat().st_size} bytes)\n"
    assert codec_tool.main(["decompress", "coded", str(stream), str(out), "--seed", "0", *cli]) == 0  # either place
    assert capsys.readouterr().out == f"codec: wrote {len(codec_project['images'])} images to {out}\n"
    _, decoded = round_trip(codec_project, "coded", tmp_path / "functions")
    assert np.array_equal(np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]), decoded)
    assert codec_tool.main([*cli, "decompress", "coded", str(stream), str(tmp_path / "o3")]) == 1
    assert (
        capsys.readouterr().err
        == f"codec: error: {model_path('coded').with_name('coded-seed3.pt')}: missing; {MISSING_MODEL}\n"
    )
    stream.write_bytes(stream.read_bytes()[:-3])
    assert codec_tool.main([*cli, "decompress", "coded", str(stream), str(tmp_path / "o2"), "--seed", "0"]) == 1
    assert "codec: error: corrupt or truncated stream" in capsys.readouterr().err
    assert codec_tool.main([*cli, "compress", "nope", str(codec_project["idx"]), str(stream)]) == 1
    assert "variants.nope: no such variant" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_an_input_without_images_is_refused_in_one_line(codec_project, tmp_path):
    empty = write_idx(tmp_path / "empty-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(codec.CodecError, match="holds no images"):
        codec_tool.compress(codec_project["params"], "plain", 0, empty, tmp_path / "x.cnz", None)
    assert not (tmp_path / "x.cnz").exists()


def test_decompress_never_writes_into_a_directory_that_holds_files(codec_project, tmp_path):
    stream, _ = round_trip(codec_project, "coded", tmp_path)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep me")
    with pytest.raises(codec.CodecError, match="exists and is not an empty directory"):
        codec_tool.decompress(codec_project["params"], "coded", 0, stream, occupied)
    assert [p.name for p in occupied.iterdir()] == ["mine.txt"]


def test_decompress_into_the_working_directory_is_refused_not_swapped_out(codec_project, tmp_path, monkeypatch):
    stream, _ = round_trip(codec_project, "coded", tmp_path)
    here = tmp_path / "empty-here"
    here.mkdir()
    monkeypatch.chdir(here)
    for target in (".", str(tmp_path)):
        with pytest.raises(codec.CodecError, match="the working directory or one holding it; choose a new directory"):
            codec_tool.decompress(codec_project["params"], "coded", 0, stream, Path(target))
    assert here.is_dir() and not any(here.iterdir())
    codec_tool.decompress(codec_project["params"], "coded", 0, stream, Path("pngs"))  # a new one, named from here
    assert (here / "pngs" / "000000.png").is_file()
