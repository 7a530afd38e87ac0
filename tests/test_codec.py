"""The codec: pipeline.lib.codec (+ quantize) and its CLI pipeline.tools.codec, on real bitstreams from tiny
trained models (tests/codec_support.py): round trips, stream sizes, the uint8 grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import paths
from pipeline.lib import codec, encoding, quantize
from pipeline.lib.models import load_model
from tests.codec_support import model_of, model_path, round_trip

pytestmark = pytest.mark.usefixtures("codec_root")


def test_entropy_round_trip_equals_the_models_reconstruction_of_its_quantised_latent(codec_project, tmp_path):
    model, images = model_of("coded"), codec_project["images"]
    latents = encoding.encode_latents(model, images)
    assert torch.equal(latents, latents.round())  # integer latent at test time
    expected = quantize.to_uint8(model(torch.from_numpy(images).float().div(255).unsqueeze(1)).detach())
    stream, decoded = round_trip(codec_project, "coded", tmp_path)
    assert np.array_equal(decoded, expected)
    assert stream.read_bytes()[4] == codec.MODES["entropy"]  # the default mode for a variant with a prior


def test_entropy_stream_size_is_close_to_the_priors_estimate(codec_project, tmp_path):
    model = model_of("coded")
    latents = encoding.encode_latents(model, codec_project["images"])
    stream = codec.pack(model, model_path("coded"), latents, "entropy")
    ideal_bytes = float(model.prior.bits(latents).detach().sum()) / 8
    overhead = codec.HEADER.size + 8 + 4  # header, payload length and crc, and at most one partial word
    assert ideal_bytes * 0.95 <= len(stream) <= ideal_bytes * 1.05 + overhead


def test_uint8_round_trip_is_bit_exact_and_calibrated_on_train(codec_project, tmp_path):
    model, images = model_of("plain"), codec_project["images"]
    train_images = np.load(paths.prepared_dir() / "train_images.npy")
    lo, hi = quantize.calibrate_uint8(encoding.encode_latents(model, train_images))
    assert all(np.array_equal(a, b) for a, b in zip((lo, hi), encoding.train_calibration(model, train_images)))
    codes = quantize.uint8_codes(encoding.encode_latents(model, images), lo, hi)
    expected = codec.decode_images(model, quantize.dequantize_uint8(codes, lo, hi))
    stream, decoded = round_trip(codec_project, "plain", tmp_path)
    assert np.array_equal(decoded, expected)
    dim = model.spec.latent_dim
    assert stream.stat().st_size == codec.HEADER.size + 8 * dim + 4 + len(images) * dim + 4


def test_the_grids_pass_over_the_train_split_shows_a_progress_bar(capsys):
    # on the real train split this pass takes ~40 s of a CPU train stage, after its last epoch line
    encoding.train_calibration(model_of("plain"), np.load(paths.prepared_dir() / "train_images.npy"))
    assert "uint8 grid: encoding the train split" in capsys.readouterr().err


def test_the_train_stage_stores_the_grid_and_compress_uses_it(codec_project, tmp_path, monkeypatch):
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
    round_trip(codec_project, "plain", tmp_path)


def test_uint8_range_stream_decodes_to_the_uint8_streams_latents_in_fewer_bytes():
    model, model_file = model_of("plain"), model_path("plain")
    latents = torch.randn(2000, model.spec.latent_dim, generator=torch.Generator().manual_seed(0))
    latents[:, 0] = 1.5  # a constant dimension: its Gaussian's spread is floored, and it still round-trips
    calibration = quantize.calibrate_uint8(latents)
    fixed, ranged = (codec.pack(model, model_file, latents, mode, calibration) for mode in ("uint8", "uint8_range"))
    assert codec.unpack(model, model_file, ranged)[0] == "uint8_range"
    assert torch.equal(codec.unpack(model, model_file, ranged)[1], codec.unpack(model, model_file, fixed)[1])
    # Gaussian codes spanning their min..max in 256 steps carry ~7.2 bits of information, not 8
    assert len(ranged) < 0.95 * len(fixed)


def test_an_empty_uint8_range_stream_round_trips():
    model, model_file = model_of("plain"), model_path("plain")
    calibration = quantize.calibrate_uint8(torch.randn(10, model.spec.latent_dim))
    stream = codec.pack(model, model_file, torch.zeros(0, model.spec.latent_dim), "uint8_range", calibration)
    assert codec.unpack(model, model_file, stream)[1].shape == (0, model.spec.latent_dim)


def test_uint8_range_round_trip_through_the_cli_functions(codec_project, tmp_path):
    (tmp_path / "fixed").mkdir(), (tmp_path / "ranged").mkdir()
    _, uint8_images = round_trip(codec_project, "plain", tmp_path / "fixed", mode="uint8")
    stream, ranged_images = round_trip(codec_project, "plain", tmp_path / "ranged", mode="uint8_range")
    assert stream.read_bytes()[4] == codec.MODES["uint8_range"]
    assert np.array_equal(ranged_images, uint8_images)


def test_a_directory_of_pngs_compresses_like_the_idx_file(codec_project, tmp_path):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, image in enumerate(codec_project["images"][:5]):
        Image.fromarray(image).save(pngs / f"img{i:02d}.png")
    _, from_png = round_trip(codec_project, "coded", tmp_path / "a", source=pngs)
    _, from_idx = round_trip(codec_project, "coded", tmp_path / "b")
    assert np.array_equal(from_png, from_idx[:5])


def test_standalone_bytes_are_the_size_of_each_images_own_stream(codec_project):
    model, model_file = model_of("coded"), model_path("coded")
    latents = encoding.encode_latents(model, codec_project["images"][:4])
    sizes = [len(codec.pack(model, model_file, latents[i : i + 1], "entropy")) for i in range(4)]
    assert codec.standalone_entropy_bytes(model, latents).tolist() == sizes


def test_uint8_codes_stay_within_half_a_step_of_the_latent():
    latents = torch.rand(100, 8) * 5 - 1
    lo, hi = quantize.calibrate_uint8(latents)
    restored = quantize.dequantize_uint8(quantize.uint8_codes(latents, lo, hi), lo, hi)
    assert torch.all((restored - latents).abs() <= torch.from_numpy((hi - lo) / 255 / 2) + 1e-6)
