"""The codec: pipeline.lib.codec (+ quantize, refine) and its CLI pipeline.tools.codec, on real bitstreams from tiny
trained models: round trips and damaged streams. The CLI finds models and prepared data through pipeline.paths:
here a project under a tmp COMPRESSNET_ROOT, trained once for the module."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import paths, tracking
from pipeline.lib import codec, encoding, quantize, refine
from pipeline.lib.config import CodecConfig, parse_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.losses import log_mse
from pipeline.lib.models import MISSING_MODEL, load_model
from pipeline.stages.train import train
from pipeline.tools import codec as codec_tool
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir, write_idx

RATE_SPEC = {**TINY_SPEC, "rate_weight": 0.01}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A project (prepared data, two tiny trained variants) under its own root, made once for the module."""
    base = tmp_path_factory.mktemp("codec")
    root = base / "project"
    # lr 0.01: in two tiny epochs the decoder learns enough for refinement to have an error to lower
    params = parse_params(
        {
            "data": {"source": str(make_emnist_dir(base / "emnist"))},
            "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "threads": 1},
            "mlflow": {"log_model": False},
            "variants": {"plain": TINY_SPEC, "coded": RATE_SPEC},
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPRESSNET_ROOT", str(root))
        prepare_from_directory(params.data, Path(params.data.source), paths.prepared_dir())
        for variant in params.variants:
            train(params, variant, 0, tracking.NoOpTracker())
    test_images = np.load(root / "data" / "prepared" / "test_images.npy")
    idx = write_idx(base / "test-images-idx3-ubyte.gz", test_images.transpose(0, 2, 1))  # EMNIST raw layout
    return {"root": root, "params": params, "images": test_images, "idx": idx}


@pytest.fixture(autouse=True)
def project(trained, monkeypatch) -> Path:
    """The CLI's paths point at the module's project (tests here never change its files)."""
    monkeypatch.setenv("COMPRESSNET_ROOT", str(trained["root"]))
    return trained["root"]


def model_path(variant: str) -> Path:
    return paths.model_file(f"{variant}-seed0")


def model_of(trained, variant: str):
    return load_model(model_path(variant), torch.device("cpu"))[0]


def round_trip(trained, variant: str, tmp_path: Path, mode: str | None = None, source: Path | None = None):
    stream, out = tmp_path / "stream.cnz", tmp_path / "decoded"
    size = codec_tool.compress(trained["params"], variant, 0, source or trained["idx"], stream, mode)
    count = codec_tool.decompress(trained["params"], variant, 0, stream, out)
    decoded = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))])
    assert size == stream.stat().st_size and count == len(decoded)
    return stream, decoded


def test_entropy_round_trip_equals_the_models_reconstruction_of_its_quantised_latent(trained, tmp_path):
    model = model_of(trained, "coded")
    latents = encoding.encode_latents(model, trained["images"])
    assert torch.equal(latents, latents.round())  # integer latent at test time
    expected = quantize.to_uint8(model(torch.from_numpy(trained["images"]).float().div(255).unsqueeze(1)).detach())
    stream, decoded = round_trip(trained, "coded", tmp_path)
    assert np.array_equal(decoded, expected)
    assert stream.read_bytes()[4] == codec.MODES["entropy"]  # the default mode for a variant with a prior


def test_entropy_stream_size_is_close_to_the_priors_estimate(trained, tmp_path):
    model = model_of(trained, "coded")
    latents = encoding.encode_latents(model, trained["images"])
    stream = codec.pack(model, model_path("coded"), latents, "entropy")
    ideal_bytes = float(model.prior.bits(latents).detach().sum()) / 8
    overhead = codec.HEADER.size + 8 + 4  # header, payload length and crc, and at most one partial word
    assert ideal_bytes * 0.95 <= len(stream) <= ideal_bytes * 1.05 + overhead


def test_uint8_round_trip_is_bit_exact_and_calibrated_on_train(trained, tmp_path):
    model, images = model_of(trained, "plain"), trained["images"]
    train_images = np.load(paths.prepared_dir() / "train_images.npy")
    lo, hi = quantize.calibrate_uint8(encoding.encode_latents(model, train_images))
    assert all(np.array_equal(a, b) for a, b in zip((lo, hi), encoding.train_calibration(model, train_images)))
    codes = quantize.uint8_codes(encoding.encode_latents(model, images), lo, hi)
    expected = codec.decode_images(model, quantize.dequantize_uint8(codes, lo, hi))
    stream, decoded = round_trip(trained, "plain", tmp_path)
    assert np.array_equal(decoded, expected)
    dim = model.spec.latent_dim
    assert stream.stat().st_size == codec.HEADER.size + 8 * dim + 4 + len(images) * dim + 4


def test_the_grids_pass_over_the_train_split_shows_a_progress_bar(trained, capsys):
    # on the real train split this pass takes ~40 s of a CPU train stage, after its last epoch line
    encoding.train_calibration(model_of(trained, "plain"), np.load(paths.prepared_dir() / "train_images.npy"))
    assert "uint8 grid: encoding the train split" in capsys.readouterr().err


def test_the_train_stage_stores_the_grid_and_compress_uses_it(trained, tmp_path, monkeypatch):
    """The model file carries its train-split grid, so compress and evaluate do not encode the train split again;
    a file without one (a best-epoch file) still gets the same grid, computed."""
    model, saved = load_model(model_path("plain"), torch.device("cpu"))
    computed = encoding.train_calibration(model, np.load(paths.prepared_dir() / "train_images.npy"))
    without = {k: v for k, v in saved.items() if k != "uint8_calibration"}
    for contents in (saved, without):
        grid = encoding.saved_calibration(model, contents, paths.prepared_dir())
        assert all(np.array_equal(a, b) for a, b in zip(grid, computed))

    def no_train_split(*_):
        raise AssertionError("the train split was encoded again")

    monkeypatch.setattr(encoding, "train_calibration", no_train_split)
    round_trip(trained, "plain", tmp_path)


def test_uint8_range_stream_decodes_to_the_uint8_streams_latents_in_fewer_bytes(trained):
    model, model_file = model_of(trained, "plain"), model_path("plain")
    latents = torch.randn(2000, model.spec.latent_dim, generator=torch.Generator().manual_seed(0))
    latents[:, 0] = 1.5  # a constant dimension: its Gaussian's spread is floored, and it still round-trips
    calibration = quantize.calibrate_uint8(latents)
    fixed, ranged = (codec.pack(model, model_file, latents, mode, calibration) for mode in ("uint8", "uint8_range"))
    assert codec.unpack(model, model_file, ranged)[0] == "uint8_range"
    assert torch.equal(codec.unpack(model, model_file, ranged)[1], codec.unpack(model, model_file, fixed)[1])
    # Gaussian codes spanning their min..max in 256 steps carry ~7.2 bits of information, not 8
    assert len(ranged) < 0.95 * len(fixed)


def test_an_empty_uint8_range_stream_round_trips(trained):
    model, model_file = model_of(trained, "plain"), model_path("plain")
    calibration = quantize.calibrate_uint8(torch.randn(10, model.spec.latent_dim))
    stream = codec.pack(model, model_file, torch.zeros(0, model.spec.latent_dim), "uint8_range", calibration)
    assert codec.unpack(model, model_file, stream)[1].shape == (0, model.spec.latent_dim)


def test_uint8_range_round_trip_through_the_cli_functions(trained, tmp_path):
    (tmp_path / "fixed").mkdir(), (tmp_path / "ranged").mkdir()
    _, uint8_images = round_trip(trained, "plain", tmp_path / "fixed", mode="uint8")
    stream, ranged_images = round_trip(trained, "plain", tmp_path / "ranged", mode="uint8_range")
    assert stream.read_bytes()[4] == codec.MODES["uint8_range"]
    assert np.array_equal(ranged_images, uint8_images)


def refined_params(trained, steps: int = 4, method: str = "lbfgs"):
    codec_config = CodecConfig(refine_steps=steps, refine_method=method, refine_lr=0.5)
    return dataclasses.replace(trained["params"], codec=codec_config)


def refine_with(trained, variant: str, images: np.ndarray, steps: int = 4, method: str = "lbfgs"):
    model = model_of(trained, variant)
    calibration = encoding.train_calibration(model, np.load(paths.prepared_dir() / "train_images.npy"))
    latents = encoding.encode_latents(model, images)
    return (
        model,
        latents,
        calibration,
        refine.refine_latents(model, images, latents, refined_params(trained, steps, method).codec, calibration),
    )


def test_refinement_lowers_the_error_inside_the_uint8_box_and_leaves_the_model_alone(trained):
    images = trained["images"]
    model, latents, (lo, hi), refined = refine_with(trained, "plain", images)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    log_error = {
        name: float(log_mse(model.decode(z).detach(), x)) for name, z in (("encoder", latents), ("refined", refined))
    }
    assert log_error["refined"] < log_error["encoder"] - 0.01, log_error  # 4 steps: -1.960 -> -1.983
    assert torch.all(refined >= torch.from_numpy(lo)) and torch.all(refined <= torch.from_numpy(hi))
    untouched = model_of(trained, "plain")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), untouched.state_dict().values()))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(refined, refine_with(trained, "plain", images)[-1])  # the same run twice: the same latents


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_each_images_refined_latent_depends_on_that_image_alone(trained, method):
    """The same three images beside three others or three different others: the same refined latents. (The batch's
    size does change float rounding, which L-BFGS's curvature amplifies, so the company is kept the same size.)"""
    images = trained["images"]
    beside = [
        refine_with(trained, "plain", np.concatenate([images[:3], others]), method=method)[-1][:3]
        for others in (images[3:6], images[6:9])
    ]
    torch.testing.assert_close(*beside, rtol=1e-6, atol=1e-6)


def test_images_refined_a_few_slots_at_a_time_keep_their_own_latents(trained, monkeypatch):
    """Fewer search slots than images: each image that stops hands its slot to the next, whose first pass joins the
    other slot's steps, and its latent lands at its own index. (The company of each image differs, so float rounding
    does too: the latents agree to a small fraction of a grid cell.)"""
    images = trained["images"][:9]
    model, _, calibration, together = refine_with(trained, "plain", images, steps=30)
    monkeypatch.setattr(refine, "REFINE_BATCH", 2)
    pass_sizes = []
    measure = refine._loss_and_grad
    monkeypatch.setattr(refine, "_loss_and_grad", lambda d, x, z: pass_sizes.append(len(x)) or measure(d, x, z))
    two_at_a_time = refine_with(trained, "plain", images, steps=30)[-1]
    assert pass_sizes.count(2) > len(pass_sizes) / 2  # full passes, not one image at a time
    cells = quantize.uint8_scale(*calibration)
    assert ((together[1:] - together[:-1]).abs() / cells).amax(1).min() > 1  # a latent at another's index would show
    assert ((two_at_a_time - together).abs() / cells).max() < 0.05


def test_a_refined_uint8_stream_decodes_bit_exactly_to_its_refined_latents(trained, tmp_path, monkeypatch):
    model, _, (lo, hi), refined = refine_with(trained, "plain", trained["images"])
    expected = codec.decode_images(model, quantize.dequantize_uint8(quantize.uint8_codes(refined, lo, hi), lo, hi))
    monkeypatch.setitem(trained, "params", refined_params(trained))
    _, decoded = round_trip(trained, "plain", tmp_path)
    assert np.array_equal(decoded, expected)


def test_an_entropy_coded_latent_is_not_refined(trained):
    model, latents, _, refined = refine_with(trained, "coded", trained["images"])
    assert refine.applied_refine_steps(model, refined_params(trained).codec) == 0
    assert refined is latents


def test_a_directory_of_pngs_compresses_like_the_idx_file(trained, tmp_path):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, image in enumerate(trained["images"][:5]):
        Image.fromarray(image).save(pngs / f"img{i:02d}.png")
    _, from_png = round_trip(trained, "coded", tmp_path / "a", source=pngs)
    _, from_idx = round_trip(trained, "coded", tmp_path / "b")
    assert np.array_equal(from_png, from_idx[:5])


def test_standalone_bytes_are_the_size_of_each_images_own_stream(trained):
    model, model_file = model_of(trained, "coded"), model_path("coded")
    latents = encoding.encode_latents(model, trained["images"][:4])
    sizes = [len(codec.pack(model, model_file, latents[i : i + 1], "entropy")) for i in range(4)]
    assert codec.standalone_entropy_bytes(model, latents).tolist() == sizes


def test_uint8_codes_stay_within_half_a_step_of_the_latent():
    latents = torch.rand(100, 8) * 5 - 1
    lo, hi = quantize.calibrate_uint8(latents)
    restored = quantize.dequantize_uint8(quantize.uint8_codes(latents, lo, hi), lo, hi)
    assert torch.all((restored - latents).abs() <= torch.from_numpy((hi - lo) / 255 / 2) + 1e-6)


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
def test_a_damaged_stream_is_a_clear_error(trained, tmp_path, damage, message, name, mode):
    stream, _ = round_trip(trained, name, tmp_path, mode=mode)
    stream.write_bytes(damage(stream.read_bytes()))
    with pytest.raises(codec.CodecError, match=message):
        codec_tool.decompress(trained["params"], name, 0, stream, tmp_path / "out")


def resealed(body: bytes) -> bytes:
    """A forged stream body with a valid checksum: only the decoder's own checks can catch it."""
    return body + struct.pack("<I", zlib.crc32(body))


# uint8_range side rows: lo, hi, code mean, code spread; the range coder cannot take a zero spread
@pytest.mark.parametrize("row, value", [(3, 0.0), (2, float("nan")), (0, float("inf"))])
def test_forged_side_information_is_a_clear_error(trained, tmp_path, row, value):
    stream, _ = round_trip(trained, "plain", tmp_path, mode="uint8_range")
    body, dim = bytearray(stream.read_bytes()[:-4]), model_of(trained, "plain").spec.latent_dim
    struct.pack_into("<f", body, codec.HEADER.size + 4 * (row * dim), value)
    stream.write_bytes(resealed(bytes(body)))
    with pytest.raises(codec.CodecError, match="side information is invalid"):
        codec_tool.decompress(trained["params"], "plain", 0, stream, tmp_path / "out")


def test_a_stream_too_short_for_its_modes_side_information_is_a_clear_error(trained, tmp_path):
    stream, _ = round_trip(trained, "plain", tmp_path, mode="uint8")
    body = bytearray(stream.read_bytes()[:-4])
    body[4] = codec.MODES["uint8_range"]  # twice the side information uint8 carries
    stream.write_bytes(resealed(bytes(body[: codec.HEADER.size + 8])))
    with pytest.raises(codec.CodecError, match="lengths do not add up"):
        codec_tool.decompress(trained["params"], "plain", 0, stream, tmp_path / "out")


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
    trained, tmp_path, name, mode, field_at, change
):
    stream, _ = round_trip(trained, name, tmp_path, mode=mode)
    body = stream.read_bytes()[:-4]
    field_at = field_at or codec.HEADER.size + 4 * codec.SIDE_ROWS[mode] * model_of(trained, name).spec.latent_dim
    value = struct.unpack_from("<I", body, field_at)[0]
    stream.write_bytes(resealed(body[:field_at] + struct.pack("<I", value + change) + body[field_at + 4 :]))
    with pytest.raises(codec.CodecError, match="lengths do not add up"):
        codec_tool.decompress(trained["params"], name, 0, stream, tmp_path / "out")


def test_a_stream_from_another_model_is_refused(trained, tmp_path):
    stream, _ = round_trip(trained, "plain", tmp_path)
    with pytest.raises(codec.CodecError, match="made by model"):
        codec_tool.decompress(trained["params"], "coded", 0, stream, tmp_path / "out")


def test_entropy_mode_needs_a_prior(trained, tmp_path):
    with pytest.raises(codec.CodecError, match="rate_weight > 0"):
        round_trip(trained, "plain", tmp_path, mode="entropy")


def test_cli_round_trips_and_reports_errors_in_one_line(trained, tmp_path, capsys):
    params_file = tmp_path / "params.yaml"  # seeds [3, 0]: without --seed the CLI takes the first, never trained here
    params_file.write_text(
        f"seeds: [3, 0]\nvariants: {{coded: {RATE_SPEC}}}\nmlflow: {{log_model: false}}\n".replace("'", "")
    )
    cli = ["--params", str(params_file)]
    stream, out = tmp_path / "x.cnz", tmp_path / "o"
    assert codec_tool.main([*cli, "compress", "coded", str(trained["idx"]), str(stream), "--seed", "0"]) == 0
    assert capsys.readouterr().out == f"codec: wrote {stream} ({stream.stat().st_size} bytes)\n"
    assert codec_tool.main(["decompress", "coded", str(stream), str(out), "--seed", "0", *cli]) == 0  # either place
    assert capsys.readouterr().out == f"codec: wrote {len(trained['images'])} images to {out}\n"
    _, decoded = round_trip(trained, "coded", tmp_path / "functions")
    assert np.array_equal(np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]), decoded)
    assert codec_tool.main([*cli, "decompress", "coded", str(stream), str(tmp_path / "o3")]) == 1
    assert (
        capsys.readouterr().err
        == f"codec: error: {model_path('coded').with_name('coded-seed3.pt')}: missing; {MISSING_MODEL}\n"
    )
    stream.write_bytes(stream.read_bytes()[:-3])
    assert codec_tool.main([*cli, "decompress", "coded", str(stream), str(tmp_path / "o2"), "--seed", "0"]) == 1
    assert "codec: error: corrupt or truncated stream" in capsys.readouterr().err
    assert codec_tool.main([*cli, "compress", "nope", str(trained["idx"]), str(stream)]) == 1
    assert "variants.nope: no such variant" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_an_input_without_images_is_refused_in_one_line(trained, tmp_path):
    empty = write_idx(tmp_path / "empty-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(codec.CodecError, match="holds no images"):
        codec_tool.compress(trained["params"], "plain", 0, empty, tmp_path / "x.cnz", None)
    assert not (tmp_path / "x.cnz").exists()


def test_decompress_never_writes_into_a_directory_that_holds_files(trained, tmp_path):
    stream, _ = round_trip(trained, "coded", tmp_path)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep me")
    with pytest.raises(codec.CodecError, match="exists and is not an empty directory"):
        codec_tool.decompress(trained["params"], "coded", 0, stream, occupied)
    assert [p.name for p in occupied.iterdir()] == ["mine.txt"]
