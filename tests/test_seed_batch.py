"""The seeds of one variant trained together with torch.func (pipeline.lib.seed_batch) against a Trainer per seed:
same weights to float rounding, same losses; the variants it cannot batch are refused by name."""

from __future__ import annotations

import pytest
import torch

from pipeline.lib.config import parse_params
from pipeline.lib.device import configure_compute
from pipeline.lib.seed_batch import SeedBatch, unsupported
from pipeline.lib.trainer import Trainer
from tests.conftest import TINY_SPEC

CPU = torch.device("cpu")
SEEDS = [0, 1, 2]


def make_params(spec: dict | None = None, **train):
    train = {"epochs": 2, "batch_size": 16, "lr": 2e-3, "device": "cpu", "threads": 1, "steps_per_epoch": 6, **train}
    return parse_params({"variants": {"tiny": spec or TINY_SPEC}, "seeds": SEEDS, "train": train})


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.rand(200, 1, 28, 28, generator=generator)


def test_each_seed_gets_exactly_its_own_gradient(images):
    configure_compute(1)
    params = make_params()
    separate = [Trainer(params, "tiny", seed, CPU, len(images)) for seed in SEEDS]
    batch = SeedBatch(params, "tiny", SEEDS, CPU, len(images))
    batches = [next(trainer.batches(images, 0)) for trainer in separate]
    for trainer, x in zip(separate, batches):
        torch.nn.functional.mse_loss(trainer.model(x), x).backward()
    batch.batched_loss(batch.weights, batch.buffers, torch.stack(batches)).sum().backward()
    for name, stacked in batch.weights.items():
        expected = torch.stack([dict(t.model.named_parameters())[name].grad for t in separate])
        torch.testing.assert_close(stacked.grad, expected, rtol=1e-4, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_batched_seeds_train_like_a_trainer_per_seed(images, schedule):
    """Same losses, and weights that differ by what rounding grows into over training: Adam divides each gradient
    by its running size, so an element whose gradient is near zero can move by up to lr on a rounding difference,
    and training carries that on."""
    configure_compute(1)
    params = make_params(schedule=schedule)
    separate = [Trainer(params, "tiny", seed, CPU, len(images)) for seed in SEEDS]
    batch = SeedBatch(params, "tiny", SEEDS, CPU, len(images))
    for epoch in range(2):
        expected = [trainer.train_epoch(images, epoch)["train_loss"] for trainer in separate]
        assert batch.train_epoch(images, epoch) == pytest.approx(expected, rel=1e-3)
    for alone, together in zip(separate, batch.unstack()):
        a, b = (torch.cat([w.flatten() for w in t.model.state_dict().values()]) for t in (alone, together))
        assert (b - a).norm() <= 0.01 * a.norm()
    first_layer = [t.model.state_dict()["encoder.0.weight"] for t in batch.trainers]
    assert not torch.equal(first_layer[0], first_layer[1])  # the seeds did not collapse into one model


@pytest.mark.parametrize(
    "spec, train, named",
    [
        ({**TINY_SPEC, "norm": "batch"}, {}, "batch norm"),
        ({**TINY_SPEC, "rate_weight": 0.01}, {}, "a rate term"),
        (TINY_SPEC, {"loss": "log_mse"}, "loss log_mse"),
        (TINY_SPEC, {"precision": "bf16"}, "precision bf16"),
        (TINY_SPEC, {"compile": "default"}, "compile default"),
    ],
)
def test_what_cannot_be_batched_is_refused_by_name(spec, train, named):
    params = make_params(spec, **train)
    assert named in unsupported(params, "tiny", CPU)
    with pytest.raises(ValueError, match=named):
        SeedBatch(params, "tiny", SEEDS, CPU, 100)


def test_a_plain_variant_can_be_batched():
    assert unsupported(make_params(), "tiny", CPU) is None
