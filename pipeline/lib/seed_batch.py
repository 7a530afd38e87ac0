"""The seeds of one variant trained together in one process: their models stacked and run as one with torch.func
(stack_module_state + vmap), so that a GPU one small model leaves idle does several models' work per kernel launch.

Each seed keeps what a Trainer of its own would have: its initial weights (torch.manual_seed(seed)), its batch order
and its optimizer state (Adam and its schedule act elementwise, so one optimizer over the stacked parameters is one
per seed). Each seed's gradient equals a separate Trainer's to float rounding (a vmapped convolution may sum in
another order); over many Adam steps such differences grow, so the weights are close to, not equal to, separate
runs': a throughput path, measured by benchmarks/bench_share.py, not the pipeline's default.
Only what is checked against Trainer is accepted: the MSE objective in fp32, no batch norm (its running statistics
are in-place buffer updates that vmap cannot batch), no rate term (its noise would come from one shared generator).
"""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call, stack_module_state, vmap

from pipeline.lib.config import Params
from pipeline.lib.device import resolve_precision
from pipeline.lib.trainer import Trainer, make_optimizer, make_scheduler


def unsupported(params: Params, variant: str, device: torch.device) -> str | None:
    """Why this variant's seeds cannot be batched on this device, or None."""
    spec, cfg = params.variant(variant), params.train_for(variant)
    reasons = {
        "batch norm": spec.norm == "batch",
        "a rate term": spec.rate_weight > 0,
        f"loss {cfg.loss}": cfg.loss != "mse",
        f"compile {cfg.compile}": cfg.compile != "none",
        f"precision {cfg.precision} (bf16 on {device.type} here)": resolve_precision(cfg.precision, device) == "bf16",
    }
    found = [reason for reason, present in reasons.items() if present]
    return f"{variant}: seeds cannot be batched with {', '.join(found)}" if found else None


class SeedBatch:
    """Trains the seeds of one variant in lockstep; `trainers` hold each seed's model once `unstack` ran."""

    def __init__(self, params: Params, variant: str, seeds: list[int], device: torch.device, train_images: int):
        if why := unsupported(params, variant, device):
            raise ValueError(why)
        self.trainers = [Trainer(params, variant, seed, device, train_images) for seed in seeds]
        self.cfg = self.trainers[0].cfg
        self.weights, self.buffers = stack_module_state([t.model for t in self.trainers])
        self.base = copy.deepcopy(self.trainers[0].model).to("meta")  # the architecture, without weights
        self.optimizer = make_optimizer(self.cfg, list(self.weights.values()))
        self.scheduler = make_scheduler(self.cfg, self.optimizer, self.trainers[0].steps_per_epoch)
        self.batched_loss = vmap(self._loss)

    def _loss(self, weights: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        recon = functional_call(self.base, (weights, buffers), (x,))
        return torch.nn.functional.mse_loss(recon, x)

    def train_epoch(self, train_x: torch.Tensor, epoch: int) -> list[float]:
        """One epoch of every seed, each on its own batch order; the mean training MSE per seed."""
        for trainer in self.trainers:
            trainer.model.train()
        total, seen = torch.zeros(len(self.trainers), dtype=torch.float64, device=train_x.device), 0
        for batches in zip(*(t.batches(train_x, epoch) for t in self.trainers)):
            x = torch.stack(batches)
            losses = self.batched_loss(self.weights, self.buffers, x)
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # seed k's weights get only loss k's gradient: the seeds share nothing
            self.optimizer.step()
            if self.scheduler:
                self.scheduler.step()
            total += losses.detach() * x.shape[1]
            seen += x.shape[1]
        return (total / seen).tolist()

    @torch.no_grad()
    def unstack(self) -> list[Trainer]:
        """Each seed's trained weights copied into its own Trainer's model (for val_loss, saving, evaluation)."""
        for k, trainer in enumerate(self.trainers):
            trainer.model.load_state_dict({name: value[k] for name, value in {**self.weights, **self.buffers}.items()})
        return self.trainers
