"""DVC stage `train@<variant>`: train one autoencoder variant on the prepared train split.

One run per (variant, seed); <run> below is `<variant>-seed<seed>`. Writes models/<run>.pt (final weights),
models/<run>.best.pt (lowest val loss) and reports/history/<run>.csv, and records the run in MLflow; with
mlflow.log_model the model is also registered, a new version of `<experiment>-<variant>` per run.
An interrupted run resumes from checkpoints/<run>.ckpt (last completed epoch) and ends with the same
weights as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline import data, dvclock, ssim, tracking
from pipeline.cli import run_stage
from pipeline.config import REPO_ROOT, Params, run_name
from pipeline.device import configure_determinism, pick_device, resolve_precision
from pipeline.models import build_model
from pipeline.prepare import PREPARED_DIR

MODELS_DIR = REPO_ROOT / "models"
HISTORY_DIR = REPO_ROOT / "reports" / "history"
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def as_batch_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] on the device, all at once."""
    return torch.from_numpy(images).to(device).unsqueeze(1).float().div_(255)


def save_atomic(obj: object, path: Path) -> None:
    data.atomic_write(path, lambda tmp: torch.save(obj, tmp))


def fingerprint(params: Params, variant: str, seed: int, manifest_sha: str) -> str:
    """Identifies the training job: a checkpoint is resumed only by the job that wrote it."""
    job = {"spec": dataclasses.asdict(params.variant(variant)), "seed": seed,
           "train": dataclasses.asdict(params.train_for(variant)), "data": manifest_sha}
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()


def log_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over images of log(per-image MSE + 1e-5): minimising it maximises the mean per-image PSNR; the floor
    (50 dB) stops near-perfect images from dominating the gradient."""
    per_image = torch.nn.functional.mse_loss(recon, x, reduction="none").flatten(1).mean(1)
    return torch.log(per_image + 1e-5).mean()


def log_mse_ssim(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log_mse plus the mean over images of log(1 - SSIM + 1e-4), SSIM with the study's uniform 11x11 window (the
    default evaluate.ssim_window; fixed here so that train depends on no evaluate key): a scale-free sum, so a 10%
    smaller error counts the same in either term. The floor plays log_mse's role."""
    dissimilarity = 1 - ssim.ssim_per_image(x, recon, "uniform").float()
    return log_mse(recon, x) + torch.log(dissimilarity + 1e-4).mean()


# train.loss -> objective(recon, x); the mean per-pixel MSE is always tracked as well (train_loss)
OBJECTIVES = {"mse": torch.nn.functional.mse_loss, "log_mse": log_mse, "log_mse_ssim": log_mse_ssim}


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
        self.optimizer = self._optimizer()
        self.scheduler = self._scheduler(math.ceil(self.images_per_epoch / self.cfg.batch_size))
        self.history: list[dict] = []

    def _optimizer(self) -> torch.optim.Optimizer:
        kind = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        return kind(self.model.parameters(), lr=self.cfg.lr, eps=self.cfg.adam_eps,
                    weight_decay=self.cfg.weight_decay)

    def _scheduler(self, steps_per_epoch: int):
        total = self.cfg.epochs * steps_per_epoch
        if self.cfg.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(self.optimizer, self.cfg.lr, total_steps=total)
        if self.cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        return None

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None, "history": self.history}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def batches(self, train_x: torch.Tensor, epoch: int):
        """The epoch's shuffled batches, ready for the model; the permutation depends only on (seed, epoch),
        so resuming is exact."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(train_x), generator=generator)[:self.images_per_epoch]
        for start in range(0, len(order), self.cfg.batch_size):
            yield self._prepare(train_x[order[start:start + self.cfg.batch_size].to(self.device)])

    def train_epoch(self, train_x: torch.Tensor, epoch: int) -> dict[str, float]:
        """One shuffled pass (or its first steps_per_epoch batches). Returns the mean training MSE as train_loss,
        whatever the objective (log_mse, a rate term), so it is in val_loss's unit for every variant, and the mean
        of the objective itself as train_objective."""
        self.model.train()
        total, seen = torch.zeros(2, dtype=torch.float64, device=self.device), 0
        batches = tqdm(self.batches(train_x, epoch), total=math.ceil(self.images_per_epoch / self.cfg.batch_size),
                       desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch", leave=False, mininterval=1.0)
        for i, x in enumerate(batches):
            with self._autocast():
                recon, bits = self.model.forward_with_rate(x)
                mse = torch.nn.functional.mse_loss(recon.float(), x)
                loss = mse if self.cfg.loss == "mse" else OBJECTIVES[self.cfg.loss](recon.float(), x)
                if bits is not None:  # rate-distortion loss: MSE + rate_weight * bits per pixel
                    loss = loss + self.rate_weight * bits.mean() / x[0].numel()
            self.optimizer.zero_grad(set_to_none=True)
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

    @torch.no_grad()
    def val_loss(self, val_x: torch.Tensor, batch_size: int = 2048) -> float:
        self.model.eval()
        total = 0.0
        for start in range(0, len(val_x), batch_size):
            x = self._prepare(val_x[start:start + batch_size])
            total += torch.nn.functional.mse_loss(self.model(x), x, reduction="sum").item()
        return total / val_x.numel()

    def fit(self, train_x: torch.Tensor, val_x: torch.Tensor, on_epoch) -> None:
        for epoch in range(len(self.history), self.cfg.epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            losses = self.train_epoch(train_x, epoch)
            train_loss = losses["train_loss"]
            seconds = time.perf_counter() - started
            val_loss = self.val_loss(val_x)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise TrainingDiverged(f"epoch {epoch + 1}: loss is {train_loss} (train) / {val_loss} (val); "
                                       f"lower train.lr (now {self.cfg.lr}) or check the data")
            row = {"epoch": epoch + 1, **losses, "val_loss": val_loss, "lr": lr,
                   "seconds": seconds, "images_per_s": self.images_per_epoch / seconds}
            self.history.append(row)
            tqdm.write(f"epoch {epoch + 1}/{self.cfg.epochs}: train {train_loss:.5f} val {val_loss:.5f} "
                       f"({seconds:.1f} s, {row['images_per_s']:.0f} img/s)")
            on_epoch(row)


def train_variant(params: Params, variant: str, seed: int, prepared: Path = PREPARED_DIR,
                  models_dir: Path = MODELS_DIR, history_dir: Path = HISTORY_DIR,
                  checkpoint_dir: Path = CHECKPOINT_DIR) -> Path:
    """Train (or resume) one variant with one seed; returns the final model file."""
    cfg = params.train_for(variant)
    configure_determinism(cfg)
    device = pick_device(cfg.device)
    manifest_sha = data.manifest_digest(prepared)
    train_x = as_batch_tensor(data.load_split(prepared, "train")[0], device)
    val_x = as_batch_tensor(data.load_split(prepared, "val")[0], device)
    experiment_id = tracking.setup(params.mlflow.experiment)
    trainer = Trainer(params, variant, seed, device, train_images=len(train_x))
    name = run_name(variant, seed)
    ckpt_path, job = checkpoint_dir / f"{name}.ckpt", fingerprint(params, variant, seed, manifest_sha)
    ckpt = _load_checkpoint(ckpt_path, job)
    best = ckpt["best"] if ckpt else {"val_loss": math.inf}
    if ckpt:
        trainer.load_state(ckpt["trainer"])
        print(f"train: resuming {name} after epoch {len(trainer.history)} from {ckpt_path}")
    run_id = _resumable_run(ckpt["run_id"], experiment_id) if ckpt else None
    dvc = dvclock.provenance({"prepared": prepared}, {"prepare": "prepare"})
    tags = {**tracking.run_tags(dvclock.stage_name("train", variant, seed)), "variant": variant, "seed": str(seed),
            "train.precision_used": trainer.precision, **tracking.flatten({"train": {"dvc": dvc}})}
    with tracking.tracked_run(run_id=run_id, run_name=name, tags=tags) as run:
        if not run_id:
            _log_inputs(params, variant, seed, prepared, manifest_sha)
            for row in trainer.history:  # epochs a resumed job trained before its old run went missing
                _log_epoch(row)

        def on_epoch(row: dict) -> None:
            _log_epoch(row)
            if row["val_loss"] < best["val_loss"]:
                best.update(val_loss=row["val_loss"], epoch=row["epoch"], state_dict=_cpu_state(trainer.model))
            save_atomic({"job": job, "run_id": run.info.run_id, "trainer": trainer.state(), "best": best}, ckpt_path)

        trainer.fit(train_x, val_x, on_epoch)
        meta = {"variant": variant, "seed": seed, "spec": dataclasses.asdict(params.variant(variant)),
                "train": dataclasses.asdict(cfg), "data_manifest_sha256": manifest_sha, "job": job,
                "mlflow_run_id": run.info.run_id, "epochs": len(trainer.history), "dvc": dvc,
                "precision_used": trainer.precision}
        final = models_dir / f"{name}.pt"
        save_atomic({**meta, "state_dict": _cpu_state(trainer.model)}, final)
        save_atomic({**meta, "state_dict": best["state_dict"], "best_epoch": best["epoch"]},
                    models_dir / f"{name}.best.pt")
        _write_history(trainer.history, history_dir / f"{name}.csv")
        _log_outputs(trainer, params, final, {**tags, "data.manifest_sha256": manifest_sha})
    ckpt_path.unlink(missing_ok=True)
    return final


def _load_checkpoint(path: Path, job: str) -> dict | None:
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("job") != job:
        print(f"train: ignoring {path}: written for other params or data")
        return None
    return ckpt


def _log_epoch(row: dict) -> None:
    mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _resumable_run(run_id: str, experiment_id: str) -> str | None:
    """The checkpoint's MLflow run if this store still has it, live, in this experiment; else None (a new run)."""
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        run = None
    if run is None or run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
        print(f"train: MLflow run {run_id} of the checkpoint is not in this store/experiment; logging to a new run")
        return None
    return run_id


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _write_history(history: list[dict], path: Path) -> None:
    data.atomic_write(path, lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False, float_format="%.8g"))


def _log_inputs(params: Params, variant: str, seed: int, prepared: Path, manifest_sha: str) -> None:
    flat = tracking.flatten({"data": dataclasses.asdict(params.data), "train": dataclasses.asdict(params.train_for(variant)),
                             "variant": {k: v for k, v in dataclasses.asdict(params.variant(variant)).items() if k != "train"}})
    mlflow.log_params({**flat, "variant.name": variant, "seed": seed})
    manifest = data.load_manifest(prepared)
    images, labels = data.load_split(prepared, "train")
    dataset = mlflow.data.from_numpy(images[:1000], targets=labels[:1000], name="emnist-prepared-train",
                                     source=str(prepared.resolve()), digest=manifest_sha[:16])
    mlflow.log_input(dataset, context="training")
    mlflow.set_tags({"data.manifest_sha256": manifest_sha, "data.source": manifest["source"],
                     "data.train_images": str(manifest["counts"]["train"])})


def _log_outputs(trainer: Trainer, params: Params, final: Path, tags: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = pd.DataFrame(trainer.history)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history.epoch, history.train_loss, "o-", label="train")
    ax.plot(history.epoch, history.val_loss, "s-", label="val")
    ax.set(xlabel="epoch", ylabel="MSE", yscale="log", title=final.stem)
    ax.legend()
    mlflow.log_figure(fig, "loss_curve.png")
    plt.close(fig)
    mlflow.log_table(history, "history.json")
    files = {"model_sha256": data.sha256_file(final), "model_md5": dvclock.md5_file(final)}
    mlflow.set_tags(files)
    if params.mlflow.log_model:
        name = tracking.registered_model_name(params.mlflow.experiment, tags["variant"])
        tracking.log_model(trainer.model, name, {**tags, **files})


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, lambda *run: f"wrote {train_variant(*run)}", argv,
                     expected=(data.DataError, tracking.TrackingError, TrainingDiverged))


if __name__ == "__main__":
    sys.exit(main())
