"""Epochs to the study's quality, and bf16 against fp32 at the same epochs, on the prepared (real) data.

Run from the repo root after `dvc repro prepare`:  python -m benchmarks.bench_epochs
Each row trains one variant with one recipe through the pipeline's own Trainer on full passes over the
train split and records val MSE after every epoch; a constant-LR run stops once it reaches the target
(the study's published model01 weights: test MSE 0.00389 on the stand-in), a one-cycle/cosine run always
trains its whole schedule (the LR depends on the planned length). Writes reports/epochs_to_quality.json
and .md after each row (a killed run keeps what finished) and logs them to MLflow as `epochs-benchmark`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch
import yaml

from pipeline import paths, tracking
from pipeline.lib import prepared
from pipeline.lib.config import load_params
from pipeline.lib.device import as_batch_tensor, configure_compute, pick_device
from pipeline.lib.io import write_json, write_text
from pipeline.lib.trainer import Trainer

RECIPES = {  # train: keys; the pipeline's defaults fill the rest
    "study": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant", "precision": "fp32"},
    "onecycle-bf16": {
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "schedule": "onecycle",
        "precision": "bf16",
    },
    "onecycle-fp32": {
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "schedule": "onecycle",
        "precision": "fp32",
    },
}
# (variant, recipe, epochs): the bf16/fp32 pair first (the precision quality check), the study's recipe last
PLAN = [
    ("model01_linear", "onecycle-bf16", 4),
    ("model01_linear", "onecycle-fp32", 4),
    ("model01", "onecycle-bf16", 4),
    ("model01", "study", 6),
]
TARGET = yaml.safe_load(paths.REFERENCE_FILE.read_text())["published_weights"]["model01"]["mse"]


def train_row(params, variant: str, recipe: str, epochs: int, seed: int, tensors: dict) -> dict:
    train = dataclasses.replace(params.train, **RECIPES[recipe], epochs=epochs, steps_per_epoch=None)
    params = dataclasses.replace(
        params,
        train=train,
        variants={variant: dataclasses.replace(params.variant(variant), train={})},
        matrix=[variant],
    )
    trainer = Trainer(params, variant, seed, tensors["train"].device, train_images=len(tensors["train"]))
    stop_early = train.schedule == "constant"
    started = time.perf_counter()
    for epoch in range(epochs):
        trainer.history.append(
            {
                "epoch": epoch + 1,
                **trainer.train_epoch(tensors["train"], epoch),
                "val_loss": trainer.val_loss(tensors["val"]),
            }
        )
        print(f"{variant} {recipe} epoch {epoch + 1}/{epochs}: val MSE {trainer.history[-1]['val_loss']:.5f}")
        if stop_early and trainer.history[-1]["val_loss"] <= TARGET:
            break
    seconds = time.perf_counter() - started
    reached = [row["epoch"] for row in trainer.history if row["val_loss"] <= TARGET]
    return {
        "variant": variant,
        "recipe": recipe,
        **RECIPES[recipe],
        "planned_epochs": epochs,
        "epochs_trained": len(trainer.history),
        "epochs_to_target": reached[0] if reached else None,
        "final_val_mse": trainer.history[-1]["val_loss"],
        "test_mse": trainer.val_loss(tensors["test"]),
        "seconds_per_epoch": seconds / len(trainer.history),
        "val_mse_per_epoch": [r["val_loss"] for r in trainer.history],
    }


def precision_check(rows: list[dict]) -> list[dict]:
    """bf16 vs fp32 final val MSE for each variant trained both ways with the same schedule and epochs."""
    by_key = {(r["variant"], r["schedule"], r["epochs_trained"], r["precision"]): r for r in rows}
    checks = []
    for (variant, schedule, epochs, precision), bf16 in by_key.items():
        fp32 = by_key.get((variant, schedule, epochs, "fp32"))
        if precision == "bf16" and fp32:
            change = bf16["final_val_mse"] / fp32["final_val_mse"] - 1
            checks.append(
                {
                    "variant": variant,
                    "schedule": schedule,
                    "epochs": epochs,
                    "val_mse_fp32": fp32["final_val_mse"],
                    "val_mse_bf16": bf16["final_val_mse"],
                    "relative_change": change,
                    "within_2_percent": abs(change) <= 0.02,
                    "speedup": fp32["seconds_per_epoch"] / bf16["seconds_per_epoch"],
                }
            )
    return checks


def write_outputs(result: dict) -> None:
    table = pd.DataFrame(result["rows"]).drop(columns=["val_mse_per_epoch"])
    curves = pd.DataFrame(
        {
            f"{r['variant']} {r['recipe']}": pd.Series(
                r["val_mse_per_epoch"], index=range(1, 1 + len(r["val_mse_per_epoch"]))
            )
            for r in result["rows"]
        }
    )
    markdown = (
        f"# Epochs to the study's quality\n\nTarget: val MSE <= {TARGET} (the study's published model01 "
        f"weights on the stand-in test set). Full passes over {result['train_images']} train images, "
        f"seed {result['seed']}, {result['threads']} threads on {result['device']}.\n\n"
        + table.to_markdown(index=False, floatfmt=".5g")
        + "\n\n## Val MSE after each epoch\n\n"
        + curves.rename_axis("epoch").to_markdown(floatfmt=".5f")
        + "\n\n## bf16 vs fp32\n\n"
        + (
            pd.DataFrame(result["precision_check"]).to_markdown(index=False, floatfmt=".4g")
            if result["precision_check"]
            else "(no variant trained both ways yet)"
        )
        + "\n"
    )
    out_json, out_md = output_files()
    write_json(out_json, result)
    write_text(out_md, markdown)
    print(markdown)


def output_files() -> tuple[Path, Path]:
    """The JSON and markdown outputs, under the project root of the moment (COMPRESSNET_ROOT, as tests set it)."""
    return paths.reports_dir() / "epochs_to_quality.json", paths.reports_dir() / "epochs_to_quality.md"


def log_to_mlflow(result: dict) -> None:
    tracking.MlflowTracker()  # the project's store and experiment
    with tracking.tracked_run(run_name="epochs-benchmark", tags=tracking.run_tags("benchmark")):
        for row in result["rows"]:
            key = f"{row['variant']}.{row['recipe']}"
            for epoch, mse in enumerate(row["val_mse_per_epoch"], start=1):
                mlflow.log_metric(f"{key}.val_mse", mse, step=epoch)
        for output in output_files():
            mlflow.log_artifact(str(output))


def row_name(variant: str, recipe: str) -> str:
    return f"{variant}:{recipe}"


def plan_row(name: str) -> str:
    """An argparse type for --only: a row of PLAN as variant:recipe, else an error listing the plan's rows."""
    rows = [row_name(variant, recipe) for variant, recipe, _ in PLAN]
    if name not in rows:
        raise argparse.ArgumentTypeError(f"{name!r} is not a row of the plan ({', '.join(rows)})")
    return name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_epochs", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", type=plan_row, help="rows of the plan to run, as variant:recipe")
    args = parser.parse_args(argv)
    if not (paths.prepared_dir() / "manifest.json").exists():
        raise SystemExit(
            f"{paths.prepared_dir()}: no prepared data; run `make repro DATA=...` or `dvc repro prepare` first"
        )
    params = load_params(paths.params_file())
    configure_compute(params.train.threads)
    device = pick_device(params.train.device)
    tensors = {
        split: as_batch_tensor(prepared.load_split(paths.prepared_dir(), split)[0], device) for split in prepared.SPLITS
    }
    result = {
        "target_val_mse": TARGET,
        "seed": args.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_images": len(tensors["train"]),
        "rows": [],
        "precision_check": [],
    }
    for variant, recipe, epochs in PLAN:
        if args.only and row_name(variant, recipe) not in args.only:
            continue
        result["rows"].append(train_row(params, variant, recipe, epochs, args.seed, tensors))
        result["precision_check"] = precision_check(result["rows"])
        write_outputs(result)
    log_to_mlflow(result)


if __name__ == "__main__":
    main()
