"""How long the plan's stages take on this machine: short probes, timed here and scaled to the splits' sizes.

Each kind of work is probed with the library code the stage runs, on random images (Pillow's codecs take about as
long on noise as on handwriting: reports/results/README.md): training steps, validation and the encoder pass that
stores the uint8 grid (train); the test split's passes, metrics and classifier pass (evaluate, study); the
classifier's steps and its accuracy passes (classifier); every codec setting and PCA on a slice of both splits
(baselines). A stage's start-up is this process's own: Python and the imports of torch and DVC, as a stage imports
torch and MLflow. Streams, refinement, logging and DVC's hashing of outputs are not probed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time

import numpy as np
import psutil
import torch
import yaml

from pipeline.lib import classifier, encoding, metrics
from pipeline.lib.baselines import compute_baselines
from pipeline.lib.config import Params
from pipeline.lib.device import configure_compute, pick_device
from pipeline.lib.evaluation import batched, reconstruct_and_measure
from pipeline.lib.trainer import Trainer

PROBE_STEPS, PROBE_IMAGES = 3, 1024
CLASSES = 47  # EMNIST-Balanced's: the classifier's head, whose size barely moves its time
BASELINES_SHARE = 40  # baselines are probed on 1/40 of each split


@dataclasses.dataclass
class Estimate:
    """Seconds of each kind of work, the stages counted, and the probed training images/s per variant."""

    train: float = 0.0
    evaluate: float = 0.0
    other: float = 0.0  # classifier, baselines, study
    startup: float = 0.0  # per stage
    stages: int = 0
    rates: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.train + self.evaluate + self.other + self.startup * self.stages


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def _images(n: int, device) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)


def variant_seconds(params: Params, variant: str, device) -> dict[str, float]:
    """Seconds per image for this variant here: a training step, validation, the encoder's pass over train
    (the uint8 grid) and evaluation (a constant learning rate: a short one-cycle schedule would end in the probe)."""
    batch = params.train_for(variant).batch_size
    images = _images(batch * (PROBE_STEPS + 1), device)
    trainer = Trainer(params, variant, 0, device, len(images))
    trainer.scheduler, trainer.images_per_epoch = None, batch * PROBE_STEPS
    compiled = params.train_for(variant).compile != "none"
    if compiled:
        torch._dynamo.reset()  # each variant compiles anew, not against the last one's recompile budget
    # warm-up: first calls allocate and pick kernels; a compiled step also compiles, then records its CUDA graphs
    trainer.train_epoch(images[: batch * (3 if compiled else 1)], 0, progress=False)
    step = _timed(trainer.train_epoch, images[batch:], 1, False) / (batch * PROBE_STEPS)
    probe = images[:PROBE_IMAGES]
    uint8 = (probe.squeeze(1) * 255).to(torch.uint8).cpu().numpy()
    evaluation(trainer.model, probe[:64], params)  # warm-up
    return {
        "step": step,
        "val": _timed(trainer.val_loss, probe) / len(probe),
        "encode": _timed(encoding.encode_latents, trainer.model.eval(), uint8) / len(probe),
        "evaluate": _timed(evaluation, trainer.model, probe, params) / len(probe),
    }


def evaluation(model, x: torch.Tensor, params: Params) -> None:
    """evaluate's work on x but its streams: the autoencoder's, encoder's and decoder's passes and their metrics,
    the uint8 stream's decoder pass and metrics, and the classifier on the reconstructions."""
    cfg = params.evaluate
    recon, latents, recon_decoder, _ = reconstruct_and_measure(model, x, cfg)
    metrics.summarize(x, recon_decoder, cfg.ssim_window, cfg.batch_size)
    metrics.summarize(x, batched(model.decode, latents, cfg.batch_size), cfg.ssim_window, cfg.batch_size)
    classifier.accuracy(classifier.build_classifier(CLASSES).to(x.device), recon, np.zeros(len(x)))


def classifier_seconds(params: Params, sizes: dict[str, int], device) -> float:
    cfg = params.classifier
    images = _images(cfg.batch_size * (PROBE_STEPS + 1), device)
    labels = torch.randint(0, CLASSES, (len(images),), generator=torch.Generator().manual_seed(0)).to(device)
    one_epoch, batch = dataclasses.replace(cfg, epochs=1), cfg.batch_size
    with contextlib.redirect_stderr(io.StringIO()):  # fit's progress bar
        classifier.fit(one_epoch, images[:batch], labels[:batch], CLASSES)  # warm-up: first calls pick kernels
        one = _timed(classifier.fit, one_epoch, images[:batch], labels[:batch], CLASSES)  # a step and the set-up
        step = (_timed(classifier.fit, one_epoch, images, labels, CLASSES) - one) / (batch * PROBE_STEPS)
    model = classifier.build_classifier(CLASSES).to(device)
    forward = _timed(classifier.accuracy, model, images, labels.cpu().numpy()) / len(images)
    return cfg.epochs * sizes["train"] * max(step, 0.0) + sum(sizes.values()) * forward


def baselines_seconds(params: Params, sizes: dict[str, int]) -> float:
    cfg, rng = params.rate_distortion, np.random.default_rng(0)
    train_n = max(min(sizes["train"], max(sizes["train"] // BASELINES_SHARE, 500)), max(cfg.pca_dims, default=0) + 1)
    train = rng.integers(0, 256, (train_n, 28, 28), dtype=np.uint8)
    test_n = min(sizes["test"], max(sizes["test"] // BASELINES_SHARE, 500))  # small splits whole: fixed costs
    test = rng.integers(0, 256, (test_n, 28, 28), dtype=np.uint8)
    seconds = _timed(compute_baselines, cfg, params.evaluate.ssim_window, train, test, False)
    return seconds * sizes["test"] / len(test)


def architecture(params: Params, variant: str) -> str:
    spec = {k: v for k, v in dataclasses.asdict(params.variant(variant)).items() if k != "description"}
    return yaml.safe_dump({**spec, "train": dataclasses.asdict(params.train_for(variant))}, sort_keys=True)


def startup_seconds() -> float:
    """How long this process has run: called first thing in main, the time Python took to start and import torch
    and DVC."""
    return max(0.0, time.time() - psutil.Process().create_time())


def estimate(
    params: Params, sizes: dict[str, int], runs: dict[str, list], others: list[str], startup: float
) -> Estimate:
    """runs: the (variant, seed) pairs to "train" and to "evaluate"; others: the other stages' names; startup: a
    stage's start-up in seconds."""
    device = pick_device(params.train.device)
    configure_compute(params.train.threads)
    studies = [name.split("@", 1)[1] for name in others if name.startswith("study@")]
    probes, per_variant = {}, {}
    for variant in dict.fromkeys([*(v for v, _ in runs["train"] + runs["evaluate"]), *studies]):
        key = architecture(params, variant)
        if key not in probes:
            probes[key] = variant_seconds(params, variant, device)
        per_variant[variant] = probes[key]
    result = Estimate(startup=startup, stages=len(runs["train"]) + len(runs["evaluate"]) + len(others))
    for variant, _ in runs["train"]:
        cfg, s = params.train_for(variant), per_variant[variant]
        per_epoch = min(sizes["train"], (cfg.steps_per_epoch or sizes["train"]) * cfg.batch_size)
        result.train += cfg.epochs * (per_epoch * s["step"] + sizes["val"] * s["val"]) + sizes["train"] * s["encode"]
    result.evaluate = sum(sizes["test"] * per_variant[v]["evaluate"] for v, _ in runs["evaluate"])
    for model in studies:
        result.other += sizes["test"] * per_variant[model]["evaluate"] + sizes["train"] * per_variant[model]["encode"]
    if "classifier" in others:
        result.other += classifier_seconds(params, sizes, device)
    if "baselines" in others:
        result.other += baselines_seconds(params, sizes)
    trained = dict.fromkeys(v for v, _ in runs["train"] + runs["evaluate"])
    result.rates = {variant: 1 / per_variant[variant]["step"] for variant in trained}
    return result
