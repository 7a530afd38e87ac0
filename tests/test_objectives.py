"""Training objectives: what each loss computes, that train_loss stays the MSE whatever is optimised, and the
compiled training loop against the eager one (tiny autoencoder, generated images)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from skimage.metrics import structural_similarity

from pipeline.lib import prepared as prepared_data
from pipeline.lib.config import parse_params
from pipeline.lib.device import as_batch_tensor
from pipeline.lib.io import DataError
from pipeline.lib.losses import OBJECTIVES, log_mse, log_mse_ssim, objective
from pipeline.lib.models import training_flops_per_image
from pipeline.lib.trainer import Trainer
from tests.conftest import TINY_SPEC
from tests.train_support import CPU, VARIANT, make_params, train_untracked


def test_log_mse_is_the_mean_log_per_image_error():
    x = torch.zeros(2, 1, 28, 28)
    recon = torch.cat([torch.full((1, 1, 28, 28), 0.1), torch.full((1, 1, 28, 28), 0.01)])
    # per-image MSE 1e-2 and 1e-4: the second image counts as much as the first despite a 100x smaller error
    expected = (math.log(1e-2 + 1e-5) + math.log(1e-4 + 1e-5)) / 2
    assert log_mse(recon, x).item() == pytest.approx(expected, rel=1e-6)


def test_log_mse_ssim_adds_the_log_dissimilarity_scikit_image_measures():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=generator, dtype=torch.float64)
    recon = (x + 0.1 * torch.randn(3, 1, 28, 28, generator=generator, dtype=torch.float64)).clamp(0, 1)
    ssim = [
        structural_similarity(
            x[i, 0].numpy(), recon[i, 0].numpy(), data_range=1.0, win_size=11, use_sample_covariance=True
        )
        for i in range(3)
    ]
    expected = log_mse(recon, x).item() + sum(math.log(1 - s + 1e-4) for s in ssim) / 3
    assert log_mse_ssim(recon.float(), x.float()).item() == pytest.approx(expected, rel=1e-5)


def test_objective_by_name_and_an_unknown_one_is_a_data_error():
    for name, function in OBJECTIVES.items():
        assert objective(name, "models/x.pt") is function
    with pytest.raises(DataError, match=r"models/x\.pt: trained on loss 'l1'"):
        objective("l1", "models/x.pt")


@pytest.mark.parametrize("loss", ["mse", "log_mse", "log_mse_ssim"])
def test_train_loss_is_the_training_mse_whatever_the_objective(prepared, loss):
    train_x = as_batch_tensor(prepared_data.load_split(prepared, "train")[0], CPU)
    params = make_params(epochs=1, lr=1e-9, loss=loss)  # lr ~0: the epoch sees the initial model throughout
    trainer = Trainer(params, VARIANT, 0, CPU, train_images=len(train_x))
    with torch.no_grad():
        initial_mse = torch.nn.functional.mse_loss(trainer.model(train_x), train_x).item()
    losses = trainer.train_epoch(train_x, 0)
    assert losses["train_loss"] == pytest.approx(initial_mse, rel=1e-4)
    with torch.no_grad():
        expected = OBJECTIVES[loss](trainer.model(train_x), train_x).item()
    assert losses["train_objective"] == pytest.approx(expected, rel=1e-3)


def test_the_model_file_stores_the_flop_count_of_the_objective_trained_on(prepared, tmp_path):
    params = make_params(epochs=1, loss="log_mse_ssim", steps_per_epoch=1)
    saved = torch.load(train_untracked(params, prepared, tmp_path), weights_only=False)
    spec = params.variant(VARIANT)
    assert saved["train_flops_per_image"] == training_flops_per_image(spec, objective=log_mse_ssim)
    assert saved["train_flops_per_image"] > training_flops_per_image(spec)  # the SSIM term's window filters count


def test_with_a_rate_term_train_loss_is_still_the_mse(prepared):
    train_x = as_batch_tensor(prepared_data.load_split(prepared, "train")[0], CPU)
    params = parse_params(
        {
            "variants": {VARIANT: {**TINY_SPEC, "rate_weight": 1.0}},
            "train": {"epochs": 1, "batch_size": 32, "lr": 1e-9, "device": "cpu", "threads": 1},
        }
    )
    trainer = Trainer(params, VARIANT, 0, CPU, train_images=len(train_x))
    losses = trainer.train_epoch(train_x, 0)
    trainer.model.eval()
    with torch.no_grad():  # rounded latents here, noisy ones in training: close, not equal
        recon, bits = trainer.model.forward_with_rate(train_x)
    assert losses["train_loss"] == pytest.approx(torch.nn.functional.mse_loss(recon, train_x).item(), rel=0.05)
    rate = bits.mean().item() / train_x[0].numel()  # rate_weight 1 x bits per pixel
    assert losses["train_objective"] - losses["train_loss"] == pytest.approx(rate, rel=0.25)


def test_the_objective_changes_what_is_learned(prepared):
    train_x = as_batch_tensor(prepared_data.load_split(prepared, "train")[0], CPU)
    weights = {}
    for loss in ("mse", "log_mse", "log_mse_ssim"):
        trainer = Trainer(make_params(epochs=1, loss=loss), VARIANT, 0, CPU, len(train_x))
        trainer.train_epoch(train_x, 0)
        weights[loss] = trainer.model.state_dict()
    for a, b in itertools.combinations(weights, 2):
        assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[a]), (a, b)


@pytest.mark.slow  # inductor compiles C++ for each mode: 80 s of the fast suite's 3 min
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_follows_the_eager_loop(prepared, mode):
    """train.compile runs the batches' forward and loss through inductor (on CPU, reduce-overhead's CUDA graphs do
    not apply but its code path runs): the same losses and weights as the eager loop, up to float rounding."""
    train_x = as_batch_tensor(prepared_data.load_split(prepared, "train")[0], CPU)
    trainers = {
        form: Trainer(make_params(epochs=1, compile=form), VARIANT, 0, CPU, len(train_x)) for form in ("none", mode)
    }
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # a count over the process: not reset by reset()
    try:
        losses = {form: trainer.train_epoch(train_x, 0, progress=False) for form, trainer in trainers.items()}
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the compiled loop did compile
    finally:
        torch._dynamo.reset()  # its compiled code is not carried into other tests
    assert losses[mode] == pytest.approx(losses["none"], rel=1e-4)
    eager, compiled = (trainers[form].model.state_dict() for form in ("none", mode))
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-3, atol=1e-5)
