"""One variant's training loop: batches, objective, optimizer and schedule, validation; checkpointable state."""

from __future__ import annotations

import math
import statistics
import time

import torch
from tqdm import tqdm

from pipeline.lib.config import Params, TrainConfig
from pipeline.lib.device import deterministic_algorithms, resolve_precision
from pipeline.lib.losses import OBJECTIVES
from pipeline.lib.models import build_model, is_collapsed

COLLAPSED = (
    "the model decodes every val image to the same image: training has collapsed, and such a model's gradients are "
    "near zero, so it may never leave it (reports/results/README.md); try another seed or a lower train.lr"
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class KerasEpsilon:
    """Adam's epsilon where Keras and TensorFlow add it: to sqrt(v) before bias correction, so at step t it weighs
    1 / sqrt(1 - beta2^t) times more than PyTorch's (31.6x at step 1). With PyTorch's placement the study's model
    took near sign-sized steps on its tiny early gradients and collapsed to a constant image within 5 steps, where
    Keras from the same weights did not (reports/results/README.md, Keras vs port)."""

    def __init__(self, params, eps: float, **kwargs):
        super().__init__(params, eps=eps, **kwargs)
        self.keras_eps = eps

    def step(self, closure=None):
        for group in self.param_groups:
            state = self.state.get(group["params"][0])
            step = 1 + (int(state["step"]) if state else 0)  # from the state: exact after a resume
            group["eps"] = self.keras_eps / math.sqrt(1 - group["betas"][1] ** step)
        return super().step(closure)


class KerasAdam(KerasEpsilon, torch.optim.Adam):
    pass


class KerasAdamW(KerasEpsilon, torch.optim.AdamW):
    pass


def make_optimizer(cfg: TrainConfig, parameters) -> torch.optim.Optimizer:
    kind = KerasAdamW if cfg.optimizer == "adamw" else KerasAdam
    return kind(parameters, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


class Trainer:
    """One variant's training loop; state (model, optimizer, scheduler, history) is checkpointable."""

    def __init__(self, params: Params, variant: str, seed: int, device: torch.device, train_images: int):
        self.cfg = params.train_for(variant)
        self.seed, self.device = seed, device
        self.precision = resolve_precision(self.cfg.precision, device)
        self.rate_weight = params.variant(variant).rate_weight
        self.images_per_epoch = min(train_images, (self.cfg.steps_per_epoch or math.inf) * self.cfg.batch_size)
        torch.manual_seed(seed)
        self.model = build_model(params.variant(variant)).to(device)
        if self.cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.cfg, self.model.parameters())
        self.losses = self._losses if self.cfg.compile == "none" else self._compiled(self._losses)
        self.scheduler = make_scheduler(self.cfg, self.optimizer, self.steps_per_epoch)
        self.history: list[dict] = []

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.images_per_epoch / self.cfg.batch_size)

    def state(self) -> dict:
        """Everything the next epoch depends on, the global RNG included (the rate variants' training noise)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "history": self.history,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _compiled(self, fn):
        """fn under torch.compile in train.compile's mode, one graph per batch shape (the full batches and the last)."""
        from torch._inductor import config as inductor  # imported here: ~1.5 s that an uncompiled run does not pay

        inductor.fallback_random = True  # the rate variants' training noise from torch's generator, as eager draws it
        if torch.are_deterministic_algorithms_enabled():
            # again, now that inductor's config is loaded: its flag too; warn-only as it was
            deterministic_algorithms(warn_only=torch.is_deterministic_algorithms_warn_only_enabled())
        compiled = torch.compile(fn, mode=self.cfg.compile, dynamic=False)
        if self.cfg.compile != "reduce-overhead":
            return compiled

        def each_batch_a_new_step(x: torch.Tensor):
            torch.compiler.cudagraph_mark_step_begin()  # the last batch's outputs are done with: its memory is reused
            return compiled(x)

        return each_batch_a_new_step

    def _losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's training MSE, and the objective it is trained on (with the rate term, for a variant with one)."""
        with self._autocast():
            recon, bits = self.model.forward_with_rate(x)
            mse = torch.nn.functional.mse_loss(recon.float(), x)
            loss = mse if self.cfg.loss == "mse" else OBJECTIVES[self.cfg.loss](recon.float(), x)
            if bits is not None:  # rate-distortion loss: MSE + rate_weight * bits per pixel
                loss = loss + self.rate_weight * bits.mean() / x[0].numel()
        return mse, loss

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def batches(self, train_x: torch.Tensor, epoch: int):
        """The epoch's shuffled batches, ready for the model; the permutation depends only on (seed, epoch),
        so resuming is exact."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(train_x), generator=generator)[: self.images_per_epoch]
        for start in range(0, len(order), self.cfg.batch_size):
            yield self._prepare(train_x[order[start : start + self.cfg.batch_size].to(self.device)])

    def train_epoch(self, train_x: torch.Tensor, epoch: int, progress: bool = True) -> dict[str, float]:
        """One shuffled pass (or its first steps_per_epoch batches). Returns the mean training MSE as train_loss,
        whatever the objective (log_mse, a rate term), so it is in val_loss's unit for every variant, and the mean
        of the objective itself as train_objective. progress=False: no bar (a probe's or benchmark's timed steps)."""
        self.model.train()
        total, seen = torch.zeros(2, dtype=torch.float64, device=self.device), 0
        batches = tqdm(
            self.batches(train_x, epoch),
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            unit="batch",
            leave=False,
            mininterval=1.0,
            disable=not progress,
        )
        for i, x in enumerate(batches):
            mse, loss = self.losses(x)
            self.optimizer.zero_grad(set_to_none=True)  # not zeroed in place: CUDA graphs reuse the gradients' memory
            loss.backward()
            self.optimizer.step()
            if self.scheduler:
                self.scheduler.step()
            total += torch.stack([mse.detach(), loss.detach()]) * len(x)
            seen += len(x)
            if i % 50 == 0:
                batches.set_postfix(loss=f"{loss.item():.5f}")
        train_loss, objective = (total / seen).tolist()
        return {"train_loss": train_loss, "train_objective": objective}

    def val_loss(self, val_x: torch.Tensor) -> float:
        return self.validate(val_x)[0]

    @torch.no_grad()
    def validate(self, val_x: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
        """The val MSE, and the largest range of any output pixel over the val images: near 0 when the model
        decodes every image to the same one (collapsed)."""
        self.model.eval()
        total, low, high = 0.0, torch.tensor(math.inf), torch.tensor(-math.inf)
        for start in range(0, len(val_x), batch_size):
            x = self._prepare(val_x[start : start + batch_size])
            recon = self.model(x)
            total += torch.nn.functional.mse_loss(recon, x, reduction="sum").item()
            low, high = torch.minimum(low, recon.amin(0).cpu()), torch.maximum(high, recon.amax(0).cpu())
        return total / val_x.numel(), (high - low).max().item()

    def fit(self, train_x: torch.Tensor, val_x: torch.Tensor, on_epoch) -> None:
        spent = []  # this process's epochs, training and validation: their median, the estimate of the time left
        for epoch in range(len(self.history), self.cfg.epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            losses = self.train_epoch(train_x, epoch)
            train_loss = losses["train_loss"]
            seconds = time.perf_counter() - started
            val_loss, output_range = self.validate(val_x)
            spent.append(time.perf_counter() - started)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise TrainingDiverged(
                    f"epoch {epoch + 1}: loss is {train_loss} (train) / {val_loss} (val); "
                    f"lower train.lr (now {self.cfg.lr}) or check the data"
                )
            row = {
                "epoch": epoch + 1,
                **losses,
                "val_loss": val_loss,
                "lr": lr,
                "seconds": seconds,
                "images_per_s": self.images_per_epoch / seconds,
                "val_output_range": output_range,
            }
            self.history.append(row)
            left = (self.cfg.epochs - epoch - 1) * statistics.median(spent)  # one slowed epoch barely moves it
            tqdm.write(
                f"epoch {epoch + 1}/{self.cfg.epochs}: train {train_loss:.5f} val {val_loss:.5f} "
                f"({seconds:.1f} s, {row['images_per_s']:.0f} img/s)"
                + (f", {tqdm.format_interval(left)} left" if left else "")
            )
            if is_collapsed(output_range, len(val_x)):
                tqdm.write(f"warning: after epoch {epoch + 1}, {COLLAPSED}")
            on_epoch(row)
