"""Run the train and evaluate stages' own functions where MLflow and DVC are not installed (a lent GPU machine).

    python -m scripts.device_run train <variant> <outdir> (--epochs E | --budget-s S) [--seed N]
    python -m scripts.device_run evaluate <variant> <outdir> [--refine-steps N] [--seed N]

Needs data/prepared (from `dvc repro prepare`) and, for evaluate, models/classifier.pt (--prepared and
--classifier name others). Both commands read params.yaml (or --params), apply the keys given here
(train.epochs with steps_per_epoch null; codec.refine_steps) and call pipeline.train.train_variant or
pipeline.evaluate.evaluate_variant unchanged, writing under <outdir>/ (models/, history/, reports/) instead of
the repo. Only MLflow is switched off: its calls do nothing, and the model file's mlflow_run_id says that no
MLflow run exists. `--budget-s S` first times 60 real training steps (alongside any other jobs; training steps
only, not validation) and picks the most full epochs that fit in S seconds with a 1.3x margin. The runs in
reports/results/h200-model01bn/ (README: "Longer training on a GPU") were made by an earlier throw-away form of
this script that made the same calls with the same params (and deterministic mode warn-only: no warning came).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import types
from pathlib import Path
from unittest import mock

import torch
import yaml

try:
    import mlflow  # noqa: F401
except ImportError:  # the stages import it at module level; nothing here calls it
    stub = types.ModuleType("mlflow")
    stub.tracking = types.SimpleNamespace(MlflowClient=None)
    sys.modules.update({"mlflow": stub, "mlflow.tracking": stub.tracking})

from pipeline import classifier, config, data, evaluate, tracking, train  # noqa: E402

NO_RUN = "none: trained by scripts/device_run.py, outside MLflow"
MAX_EPOCHS = 150


@contextlib.contextmanager
def _no_run(**_):
    yield types.SimpleNamespace(info=types.SimpleNamespace(run_id=NO_RUN))


@contextlib.contextmanager
def mlflow_switched_off():
    """The stages' MLflow calls do nothing while inside; everything is restored on exit."""
    silent = lambda *_, **__: None  # noqa: E731
    with contextlib.ExitStack() as stack:
        for module, name, value in [(tracking, "setup", silent), (tracking, "tracked_run", _no_run),
                                    (train, "_log_inputs", silent), (train, "_log_epoch", silent),
                                    (train, "_log_outputs", silent), (train, "_resumable_run", silent),
                                    (evaluate, "_log_to_mlflow", lambda *_, **__: NO_RUN)]:
            stack.enter_context(mock.patch.object(module, name, value))
        yield


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
        raise config.ConfigError(f"variants.{args.variant}.train sets its own epochs or steps_per_epoch, "
                                 "which would override --epochs; remove them there")
    return params


def seconds_per_epoch(params: config.Params, variant: str, prepared: Path, steps: int = 60) -> float:
    """One full epoch's time, extrapolated from `steps` timed steps of Trainer.train_epoch after 20 warm-up ones."""
    cfg = params.train_for(variant)
    train.configure_determinism(cfg)  # as train_variant runs: same threads and kernels
    device = train.pick_device(cfg.device)
    x = train.as_batch_tensor(data.load_split(prepared, "train")[0], device)
    trainer = train.Trainer(params, variant, 0, device, train_images=len(x))
    full_steps, batch = math.ceil(trainer.images_per_epoch / trainer.cfg.batch_size), trainer.cfg.batch_size
    trainer.scheduler, trainer.images_per_epoch = None, 20 * batch
    trainer.train_epoch(x, 0)
    trainer.images_per_epoch = steps * batch
    started = time.perf_counter()
    trainer.train_epoch(x, 1)  # returns floats: the device has finished
    return (time.perf_counter() - started) / steps * full_steps


def run_train(args) -> None:
    epochs, outdir = args.epochs, args.outdir
    if epochs is None:
        per_epoch = seconds_per_epoch(train_params(args, 1), args.variant, args.prepared)
        epochs = max(1, min(MAX_EPOCHS, int(args.budget_s / (per_epoch * 1.3))))
        print(f"{args.variant}: {per_epoch:.1f} s per epoch -> {epochs} epochs in {args.budget_s:.0f} s", flush=True)
    params = train_params(args, epochs)
    device = train.pick_device(params.train_for(args.variant).device)
    started = time.perf_counter()
    final = train.train_variant(params, args.variant, args.seed, args.prepared, models_dir=outdir / "models",
                                history_dir=outdir / "history", checkpoint_dir=outdir / "checkpoints")
    info = {"variant": args.variant, "seed": args.seed, "epochs": epochs, "train_seconds": time.perf_counter() - started,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "model_sha256": data.sha256_file(final)}
    (outdir / f"train-{args.variant}-seed{args.seed}.json").write_text(json.dumps(info, indent=1))
    print(f"{args.variant}: wrote {final} in {info['train_seconds']:.0f} s", flush=True)


def run_evaluate(args) -> None:
    outdir, steps = args.outdir, args.refine_steps
    params = config.load_params(args.params) if steps is None else params_with(args, "codec", refine_steps=steps)
    result = evaluate.evaluate_variant(params, args.variant, args.seed, args.prepared, models_dir=outdir / "models",
                                       history_dir=outdir / "history", reports_dir=outdir / "reports",
                                       classifier_file=args.classifier)
    keys = ("psnr", "ssim", "psnr_pooled_uint8", "bytes_per_image_uint8_range")
    print(args.variant, {key: result.get(key) for key in keys})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "evaluate"])
    parser.add_argument("variant")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--budget-s", type=float)
    parser.add_argument("--refine-steps", type=int, help="codec.refine_steps (default: the params file's)")
    parser.add_argument("--params", type=Path, default=config.PARAMS_FILE)
    parser.add_argument("--prepared", type=Path, default=train.PREPARED_DIR)
    parser.add_argument("--classifier", type=Path, default=classifier.CLASSIFIER_FILE)
    args = parser.parse_args(argv)
    if args.command == "train" and (args.epochs is None) == (args.budget_s is None):
        parser.error("train needs exactly one of --epochs and --budget-s")
    args.outdir.mkdir(parents=True, exist_ok=True)
    with mlflow_switched_off():
        try:
            (run_train if args.command == "train" else run_evaluate)(args)
        except config.ConfigError as err:
            print(f"device_run: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
