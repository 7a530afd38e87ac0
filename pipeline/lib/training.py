"""The training loop: one variant, one seed, with checkpoints after every epoch and a tracker for the record.

An interrupted run resumes from its checkpoint (the last completed epoch) and ends with the same weights as an
uninterrupted one. Paths and the tracker (MLflow or a no-op one) are passed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.lib import encoding, prepared
from pipeline.lib.config import Params, flatten, run_name
from pipeline.lib.device import as_batch_tensor, configure_compute, pick_device, processor_name
from pipeline.lib.io import DataError, atomic_write, load_torch, md5_file, save_torch, sha256_file
from pipeline.lib.losses import OBJECTIVES
from pipeline.lib.models import training_flops_per_image
from pipeline.lib.trainer import Trainer


@dataclass(frozen=True)
class RunFiles:
    """Where one run's outputs go."""

    model: Path  # final weights
    best_model: Path  # weights of the epoch with the lowest val loss
    history: Path  # one CSV row per epoch
    checkpoint: Path  # deleted once the run ends


def fingerprint(params: Params, variant: str, seed: int, manifest_sha: str, hardware: dict) -> str:
    """Identifies the training job: a checkpoint is resumed only by the job that wrote it, with the same params,
    data, training code, torch version and hardware (precision, processor, threads, CPU kernels): from the same state,
    other code or another machine computes other weights."""
    job = {
        "spec": dataclasses.asdict(params.variant(variant)),
        "seed": seed,
        "train": dataclasses.asdict(params.train_for(variant)),
        "data": manifest_sha,
        "code": code_digest(),
        "torch": torch.__version__,
        "hardware": {**hardware, "cpu_kernels": torch.backends.cpu.get_cpu_capability()},
    }
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()


def code_digest() -> str:
    """sha256 over the source of the modules that decide what a training step computes."""
    from pipeline.lib import device, losses, models, ssim, trainer

    digest = hashlib.sha256()
    for module in (sys.modules[__name__], trainer, device, losses, models, ssim):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def train_run(
    params: Params,
    variant: str,
    seed: int,
    prepared_dir: Path,
    files: RunFiles,
    tracker,
    tags: dict[str, str],
    meta: dict,
    registered_name: str | None = None,
) -> Path:
    """Train (or resume) one variant with one seed; returns the final model file. `meta` joins the model files'
    metadata, `tags` the run's tags; with `registered_name` the model is logged and registered under it."""
    cfg = params.train_for(variant)
    configure_compute(cfg.threads)
    device = pick_device(cfg.device)
    manifest_sha = prepared.manifest_digest(prepared_dir)
    train_images, train_labels = prepared.load_split(prepared_dir, "train")
    train_x = as_batch_tensor(train_images, device)
    val_x = as_batch_tensor(prepared.load_split(prepared_dir, "val")[0], device)
    trainer = Trainer(params, variant, seed, device, train_images=len(train_x))
    hardware = {
        "precision_used": trainer.precision,
        "processor": processor_name(device),
        "threads_used": torch.get_num_threads(),
    }
    name, job = run_name(variant, seed), fingerprint(params, variant, seed, manifest_sha, hardware)
    ckpt = _load_checkpoint(files.checkpoint, job)
    best = ckpt["best"] if ckpt else {"val_loss": math.inf}
    if ckpt:
        trainer.load_state(ckpt["trainer"])
        print(f"train: resuming {name} after epoch {len(trainer.history)} from {files.checkpoint}")
    run_id = ckpt["run_id"] if ckpt else None
    if run_id and not tracker.resumable(run_id):
        print(f"train: MLflow run {run_id} of the checkpoint is not in this store/experiment; logging to a new run")
        run_id = None
    tags = {**tags, **{f"train.{key}": value for key, value in hardware.items()}}
    with tracker.run(name, tags, resume_id=run_id) as run:
        if not run_id:
            _log_inputs(run, params, variant, seed, manifest_sha, train_images, train_labels, prepared_dir)
            for row in trainer.history:  # epochs a resumed job trained before its old run went missing
                _log_epoch(run, row)

        def on_epoch(row: dict) -> None:
            _log_epoch(run, row)
            if row["val_loss"] < best["val_loss"]:
                best.update(val_loss=row["val_loss"], epoch=row["epoch"], state_dict=_cpu_state(trainer.model))
            state = {"job": job, "run_id": run.run_id, "trainer": trainer.state(), "best": best}
            save_torch(state, files.checkpoint)

        trainer.fit(train_x, val_x, on_epoch)
        meta = {
            "variant": variant,
            "seed": seed,
            "spec": dataclasses.asdict(params.variant(variant)),
            "train": dataclasses.asdict(cfg),
            # counted here, where the optimizer has imported torch._dynamo already: the counter's first use imports
            # it (~1 s), which evaluate, reading the count from this file, then does not pay
            "train_flops_per_image": training_flops_per_image(params.variant(variant), objective=OBJECTIVES[cfg.loss]),
            "data_manifest_sha256": manifest_sha,
            "job": job,
            "mlflow_run_id": run.run_id,
            "epochs": len(trainer.history),
            **meta,
            **hardware,
        }
        # the codec's uint8 grid, once, instead of an encoder pass over the train split in every evaluate/compress
        calibration = torch.from_numpy(np.stack(encoding.train_calibration(trainer.model.eval(), train_images)))
        save_torch({**meta, "state_dict": _cpu_state(trainer.model), "uint8_calibration": calibration}, files.model)
        save_torch({**meta, "state_dict": best["state_dict"], "best_epoch": best["epoch"]}, files.best_model)
        write_history(trainer.history, files.history)
        _log_outputs(run, trainer, files.model, registered_name, {**tags, "data.manifest_sha256": manifest_sha})
    files.checkpoint.unlink(missing_ok=True)
    return files.model


def write_history(history: list[dict], path: Path) -> None:
    atomic_write(path, lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False, float_format="%.8g"))


def _load_checkpoint(path: Path, job: str) -> dict | None:
    """The checkpoint of this job, or None: none yet, one of another job, or one that cannot be read (a corrupt
    file is ignored, so that it does not fail every rerun: training starts over and overwrites it)."""
    if not path.exists():
        return None
    try:
        ckpt = load_torch(path, "")
    except DataError as err:
        print(f"train: ignoring a checkpoint that cannot be used, starting over: {err}")
        return None
    if ckpt.get("job") != job:
        print(f"train: ignoring {path}: written for other params, data, code or hardware")
        return None
    return ckpt


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _log_epoch(run, row: dict) -> None:
    run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _log_inputs(
    run, params: Params, variant: str, seed: int, manifest_sha: str, images, labels, prepared_dir: Path
) -> None:
    spec = {k: v for k, v in dataclasses.asdict(params.variant(variant)).items() if k != "train"}
    manifest = prepared.load_manifest(prepared_dir)  # the data as prepared, not as params.yaml says now
    data = {key: manifest[key] for key in ("source", "val_fraction", "seed")}
    flat = flatten({"data": data, "train": dataclasses.asdict(params.train_for(variant)), "variant": spec})
    run.log_params({**flat, "variant.name": variant, "seed": seed})
    run.log_dataset(
        images[:1000],
        labels[:1000],
        name="emnist-prepared-train",
        source=str(prepared_dir.resolve()),
        digest=manifest_sha[:16],
        context="training",
    )
    run.set_tags(
        {
            "data.manifest_sha256": manifest_sha,
            "data.source": manifest["source"],
            "data.train_images": str(manifest["counts"]["train"]),
        }
    )


def _log_outputs(run, trainer: Trainer, final: Path, registered_name: str | None, tags: dict[str, str]) -> None:
    # no loss-curve image: MLflow charts the per-epoch metrics itself (a matplotlib figure cost ~1 s of every run)
    run.log_table(pd.DataFrame(trainer.history), "history.json")
    files = {"model_sha256": sha256_file(final), "model_md5": md5_file(final)}
    run.set_tags(files)
    if registered_name:
        print(f"train: logging the model and registering it as {registered_name} (a few seconds)", flush=True)
        run.log_model(trainer.model, registered_name, {**tags, **files})
