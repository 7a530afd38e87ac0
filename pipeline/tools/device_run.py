"""Train and evaluate with the library where MLflow and DVC are not installed (a lent GPU machine).

    python -m pipeline.tools.device_run train <variant> <outdir> (--epochs E | --budget-s S) [--seed N]
    python -m pipeline.tools.device_run evaluate <variant> <outdir> [--refine-steps N] [--seed N]

Needs data/prepared (from `dvc repro prepare`) and, for evaluate, models/classifier.pt (--prepared and
--classifier name others). Both commands read params.yaml (or --params), apply the keys given here
(train.epochs with steps_per_epoch null; codec.refine_steps) and call the same library functions as the train and
evaluate stages (pipeline.lib.training.train_run, pipeline.lib.evaluation.evaluate_model) with the no-op tracker,
writing under <outdir>/ (models/, history/, reports/) instead of the repo; the model file's mlflow_run_id is null.
`--budget-s S` first times 60 real training steps (alongside any other jobs; training steps only, not validation)
and picks the most full epochs that fit in S seconds with a 1.3x margin.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import yaml

from pipeline import paths
from pipeline.cli import one_line, os_error_line
from pipeline.lib import config, prepared, schema
from pipeline.lib.device import as_batch_tensor, configure_compute, pick_device
from pipeline.lib.evaluation import evaluate_model, final_losses
from pipeline.lib.io import DataError, sha256_file, write_text
from pipeline.lib.tracker import NoOpTracker
from pipeline.lib.trainer import Trainer
from pipeline.lib.training import RunFiles, train_run

MAX_EPOCHS = 150
BUDGET_MARGIN = 1.3  # an epoch's time is extrapolated from a few steps: room for the rest to run slower


def params_with(args, section: str, **keys) -> config.Params:
    """The params file with keys of one section replaced, validated as usual; the file is kept in outdir."""
    raw = yaml.safe_load(Path(args.params).read_text())
    raw[section] = {**(raw.get(section) or {}), **keys}
    path = args.outdir / f"params-{args.command}-{args.variant}-seed{args.seed}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config.load_params(path)


def train_params(args, epochs: int) -> config.Params:
    """params with train.epochs set and full passes; an error if the variant's own train: block would win."""
    params = params_with(args, "train", epochs=epochs, steps_per_epoch=None)
    cfg = params.train_for(args.variant)
    if (cfg.epochs, cfg.steps_per_epoch) != (epochs, None):
        raise config.ConfigError(
            f"variants.{args.variant}.train sets its own epochs or steps_per_epoch, "
            "which would override --epochs; remove them there"
        )
    return params


def seconds_per_epoch(params: config.Params, variant: str, prepared_dir: Path, steps: int = 60) -> float:
    """One full epoch's time, extrapolated from `steps` timed steps of Trainer.train_epoch after 20 warm-up ones."""
    cfg = params.train_for(variant)
    configure_compute(cfg.threads)  # as train_run runs: same threads and kernels
    device = pick_device(cfg.device)
    x = as_batch_tensor(prepared.load_split(prepared_dir, "train")[0], device)
    trainer = Trainer(params, variant, 0, device, train_images=len(x))
    full_steps, batch = math.ceil(trainer.images_per_epoch / trainer.cfg.batch_size), trainer.cfg.batch_size
    trainer.scheduler, trainer.images_per_epoch = None, 20 * batch
    trainer.train_epoch(x, 0, progress=False)
    trainer.images_per_epoch = steps * batch
    started = time.perf_counter()
    trainer.train_epoch(x, 1, progress=False)  # returns floats: the device has finished
    return (time.perf_counter() - started) / steps * full_steps


def run_train(args) -> None:
    epochs, outdir = args.epochs, args.outdir
    if epochs is None:
        per_epoch = seconds_per_epoch(train_params(args, 1), args.variant, args.prepared)
        epochs = max(1, min(MAX_EPOCHS, int(args.budget_s / (per_epoch * BUDGET_MARGIN))))
        over = (
            " (the budget is under one epoch with its 30% margin: one epoch anyway)"
            if epochs * per_epoch * BUDGET_MARGIN > args.budget_s
            else ""
        )
        print(
            f"{args.variant}: {per_epoch:.1f} s per epoch -> {epochs} epochs in {args.budget_s:.0f} s{over}", flush=True
        )
    params = train_params(args, epochs)
    device = pick_device(params.train_for(args.variant).device)
    name, started = config.run_name(args.variant, args.seed), time.perf_counter()
    files = RunFiles(
        outdir / "models" / f"{name}.pt",
        outdir / "models" / f"{name}.best.pt",
        outdir / "history" / f"{name}.csv",
        outdir / "checkpoints" / f"{name}.ckpt",
    )
    tags = {"variant": args.variant, "seed": str(args.seed)}
    final = train_run(params, args.variant, args.seed, args.prepared, files, NoOpTracker(), tags, {})
    info = {
        "variant": args.variant,
        "seed": args.seed,
        "epochs": epochs,
        "train_seconds": time.perf_counter() - started,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model_sha256": sha256_file(final),
    }
    (outdir / f"train-{args.variant}-seed{args.seed}.json").write_text(json.dumps(info, indent=1))
    print(f"{args.variant}: wrote {final} in {info['train_seconds']:.0f} s", flush=True)


def run_evaluate(args) -> None:
    outdir, steps = args.outdir, args.refine_steps
    params = config.load_params(args.params) if steps is None else params_with(args, "codec", refine_steps=steps)
    name = config.run_name(args.variant, args.seed)
    evaluation = evaluate_model(
        params,
        args.variant,
        args.seed,
        outdir / "models" / f"{name}.pt",
        args.prepared,
        final_losses(outdir / "history" / f"{name}.csv"),
        args.classifier,
    )
    result = evaluation.metrics
    result["run"].update(dvc={}, mlflow_run_id=None)
    write_text(outdir / "reports" / "metrics" / f"{name}.json", schema.dumps(result))
    keys = ("psnr", "ssim", "psnr_pooled_uint8", "bytes_per_image_uint8_range")
    print(args.variant, {key: result.get(key) for key in keys})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.device_run", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "evaluate"])
    parser.add_argument("variant")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--budget-s", type=float)
    parser.add_argument("--refine-steps", type=int, help="codec.refine_steps (default: the params file's)")
    parser.add_argument("--params", type=Path, default=paths.params_file())
    parser.add_argument("--prepared", type=Path, default=paths.prepared_dir())
    parser.add_argument("--classifier", type=Path, default=paths.classifier_file())
    args = parser.parse_args(argv)
    if args.command == "train" and (args.epochs is None) == (args.budget_s is None):
        parser.error("train needs exactly one of --epochs and --budget-s")
    if args.budget_s is not None and not (math.isfinite(args.budget_s) and args.budget_s > 0):
        parser.error(f"--budget-s must be a number of seconds > 0, not {args.budget_s}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    try:
        (run_train if args.command == "train" else run_evaluate)(args)
    except (config.ConfigError, DataError) as err:  # a bad params file; a prepared split or model not there
        print(f"device_run: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"device_run: {os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("device_run: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
