"""Encode-time refinement (pipeline.lib.refine) on the codec tests' tiny trained models (tests/codec_support.py):
it lowers the error inside the uint8 box, each image on its own, and its streams decode bit-exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import paths
from pipeline.lib import codec, encoding, quantize, refine
from pipeline.lib.config import CodecConfig
from pipeline.lib.losses import log_mse
from tests.codec_support import model_of, round_trip

pytestmark = pytest.mark.usefixtures("codec_root")


def refined_params(codec_project, steps: int = 4, method: str = "lbfgs"):
    codec_config = CodecConfig(refine_steps=steps, refine_method=method, refine_lr=0.5)
    return dataclasses.replace(codec_project["params"], codec=codec_config)


def refine_with(codec_project, variant: str, images: np.ndarray, steps: int = 4, method: str = "lbfgs"):
    model = model_of(variant)
    calibration = encoding.train_calibration(model, np.load(paths.prepared_dir() / "train_images.npy"))
    latents = encoding.encode_latents(model, images)
    return (
        model,
        latents,
        calibration,
        refine.refine_latents(model, images, latents, refined_params(codec_project, steps, method).codec, calibration),
    )


def test_refinement_lowers_the_error_inside_the_uint8_box_and_leaves_the_model_alone(codec_project):
    images = codec_project["images"]
    model, latents, (lo, hi), refined = refine_with(codec_project, "plain", images)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    log_error = {
        name: float(log_mse(model.decode(z).detach(), x)) for name, z in (("encoder", latents), ("refined", refined))
    }
    assert log_error["refined"] < log_error["encoder"] - 0.01, log_error  # 4 steps: -1.960 -> -1.983
    assert torch.all(refined >= torch.from_numpy(lo)) and torch.all(refined <= torch.from_numpy(hi))
    untouched = model_of("plain")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), untouched.state_dict().values()))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(refined, refine_with(codec_project, "plain", images)[-1])  # the same run twice: the same latents


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_each_images_refined_latent_depends_on_that_image_alone(codec_project, method):
    """The same three images beside three others or three different others: the same refined latents. (The batch's
    size does change float rounding, which L-BFGS's curvature amplifies, so the company is kept the same size.)"""
    images = codec_project["images"]
    beside = [
        refine_with(codec_project, "plain", np.concatenate([images[:3], others]), method=method)[-1][:3]
        for others in (images[3:6], images[6:9])
    ]
    torch.testing.assert_close(*beside, rtol=1e-6, atol=1e-6)


def test_images_refined_a_few_slots_at_a_time_keep_their_own_latents(codec_project, monkeypatch):
    """Fewer search slots than images: each image that stops hands its slot to the next, whose first pass joins the
    other slot's steps, and its latent lands at its own index. (The company of each image differs, so float rounding
    does too: the latents agree to a small fraction of a grid cell.)"""
    images = codec_project["images"][:9]
    model, _, calibration, together = refine_with(codec_project, "plain", images, steps=30)
    monkeypatch.setattr(refine, "REFINE_BATCH", 2)
    pass_sizes = []
    measure = refine._loss_and_grad
    monkeypatch.setattr(refine, "_loss_and_grad", lambda d, x, z: pass_sizes.append(len(x)) or measure(d, x, z))
    two_at_a_time = refine_with(codec_project, "plain", images, steps=30)[-1]
    assert pass_sizes.count(2) > len(pass_sizes) / 2  # full passes, not one image at a time
    cells = quantize.uint8_scale(*calibration)
    assert ((together[1:] - together[:-1]).abs() / cells).amax(1).min() > 1  # a latent at another's index would show
    assert ((two_at_a_time - together).abs() / cells).max() < 0.05


def test_a_refined_uint8_stream_decodes_bit_exactly_to_its_refined_latents(codec_project, tmp_path, monkeypatch):
    model, _, (lo, hi), refined = refine_with(codec_project, "plain", codec_project["images"])
    expected = codec.decode_images(model, quantize.dequantize_uint8(quantize.uint8_codes(refined, lo, hi), lo, hi))
    monkeypatch.setitem(codec_project, "params", refined_params(codec_project))
    _, decoded = round_trip(codec_project, "plain", tmp_path)
    assert np.array_equal(decoded, expected)


def test_an_entropy_coded_latent_is_not_refined(codec_project):
    model, latents, _, refined = refine_with(codec_project, "coded", codec_project["images"])
    assert refine.applied_refine_steps(model, refined_params(codec_project).codec) == 0
    assert refined is latents
