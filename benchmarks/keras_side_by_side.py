"""The study's own Keras model and this port, trained side by side with the study's recipe on the stand-in.

Needs the optional extra (pip install -e '.[keras]'). From the repo root:
  python -m benchmarks.keras_side_by_side steps --seed 0 --steps 300
      same initial weights (Keras' Glorot init copied into the port), same batches in the same order: the forward
      difference at step 0 and both losses step by step
  python -m benchmarks.keras_side_by_side golden
      the study's published weights in its own Keras model: outputs on 8 synthetic images for the fast test
      (tests/expected/study_keras_forward.npz; tests/test_keras_weights.py compares the port with them)
  python -m benchmarks.keras_side_by_side epochs --seeds 0 1 2 --epochs 3
      each framework as a user runs it (its own initialisation and shuffling): Keras' fit() against the port's
      Trainer with the study's recipe; test MSE and dead latent units after every epoch, Welch's test per epoch
The study's protocol: all train images (no validation split), the test split as validation, batch 128, Adam 1e-3
(epsilon 1e-7), MSE. Writes reports/results/keras_vs_port_<mode>.{json,md} after each run; another variant, a steps
seed other than 0 or an ablation adds itself to the name (keras_vs_port_steps_model02_seed3), so runs never overwrite
each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch  # before TensorFlow: importing torch after it crashes the process

from benchmarks.arguments import non_negative, positive
from pipeline import paths
from pipeline.lib import idx
from pipeline.lib.config import load_params
from pipeline.lib.device import configure_compute
from pipeline.lib.io import write_json, write_text
from pipeline.lib.keras_weights import copy_keras_weights, name_key, read_keras_weights, study_files
from pipeline.lib.trainer import Trainer

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    import keras  # noqa: E402
except ModuleNotFoundError as missing:  # the optional extra; its modules are not in the core install
    sys.exit(f"keras_side_by_side: {missing.name} is not installed: it is the optional extra (make install-keras)")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

STUDY = {"optimizer": "adam", "lr": 1e-3, "adam_eps": 1e-7, "weight_decay": 0.0, "schedule": "constant"}
STUDY_TRAIN = {**STUDY, "batch_size": 128, "precision": "fp32", "channels_last": True, "steps_per_epoch": None}
OUT = paths.root() / "reports" / "results"
GOLDEN = paths.root() / "tests" / "expected" / "study_keras_forward.npz"


def load_data(directory: Path) -> dict[str, np.ndarray]:
    """The stand-in's train and test images, upright, float32 in [0, 1], shape (n, 28, 28)."""
    files = idx.find_split_files(directory)
    return {
        split: (idx.read_idx(files[f"{split}_images"], "images").transpose(0, 2, 1) / np.float32(255)).astype("f4")
        for split in ("train", "test")
    }


def keras_model(spec) -> tuple[keras.Model, keras.Model, keras.Model]:
    """The study's encoder, decoder and autoencoder, as its notebooks build them, for a VariantSpec."""
    image = keras.Input((28, 28, 1))
    x = image
    for filters, stride in zip(spec.encoder_filters, spec.encoder_strides):
        x = keras.layers.Conv2D(filters, spec.kernel_size, strides=stride, padding="same", activation="relu")(x)
    encoder = keras.Model(image, keras.layers.Dense(spec.latent_dim, activation="relu")(keras.layers.Flatten()(x)))
    latent = keras.Input((spec.latent_dim,))
    size, channels = spec.encoded_size(), spec.encoder_filters[-1]
    y = keras.layers.Dense(size * size * channels, activation="relu")(latent)
    y = keras.layers.Reshape((size, size, channels))(y)
    for filters, stride in zip(spec.decoder_filters, spec.decoder_strides):
        y = keras.layers.Conv2DTranspose(filters, spec.kernel_size, strides=stride, padding="same", activation="relu")(
            y
        )
    y = keras.layers.Conv2DTranspose(1, spec.kernel_size, padding="same", activation="sigmoid")(y)
    decoder = keras.Model(latent, y)
    autoencoder = keras.Model(image, decoder(encoder(image)))
    autoencoder.compile(optimizer=keras.optimizers.Adam(STUDY["lr"], epsilon=STUDY["adam_eps"]), loss="mse")
    return encoder, decoder, autoencoder


def keras_weights(model: keras.Model) -> dict:
    return {layer.name: tuple(layer.get_weights()) for layer in model.layers if layer.get_weights()}


def in_layer_order(part: keras.Model, weights: dict) -> list[np.ndarray]:
    """A weights file's arrays in the order of the model's layers (the file sorts by name: the decoder's Dense
    comes after its transposed convs there)."""
    queues = {}
    for name in weights:
        queues.setdefault(name_key(name)[0], []).append(name)
    kinds = {"Conv2D": "conv2d", "Conv2DTranspose": "conv2d_transpose", "Dense": "dense"}
    layers = [layer for layer in part.layers if layer.get_weights()]
    return [array for layer in layers for array in weights[queues[kinds[type(layer).__name__]].pop(0)]]


def port_metrics(model: torch.nn.Module, test: np.ndarray) -> tuple[float, int]:
    """Test MSE and dead latent units (0 for every test image) of a port model."""
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(test[:, None])
        latents = torch.cat([model.encode(x[i : i + 2048]) for i in range(0, len(x), 2048)])
        recon = torch.cat([model.decode(latents[i : i + 2048]) for i in range(0, len(x), 2048)])
    return float((recon - x).square().mean()), int((latents == 0).all(0).sum())


def keras_metrics(encoder: keras.Model, decoder: keras.Model, test: np.ndarray) -> tuple[float, int]:
    latents = encoder.predict(test[..., None], batch_size=2048, verbose=0)
    recon = decoder.predict(latents, batch_size=2048, verbose=0)[..., 0]
    return float(np.square(recon - test).mean()), int((latents == 0).all(0).sum())


def study_params(variant: str, padding: str, epochs: int = 1):
    params = load_params(paths.params_file())
    train = dataclasses.replace(params.train, **STUDY_TRAIN, epochs=epochs)
    spec = dataclasses.replace(params.variant(variant), train={}, padding=padding)
    return dataclasses.replace(params, train=train, variants={variant: spec}, matrix=[variant])


def golden(args) -> None:
    """The study's Keras forward pass on its published weights, saved for tests/test_keras_weights.py."""
    images = (np.random.default_rng(0).random((8, 28, 28)) ** 3).astype("f4")
    outputs, params = {"images": images}, load_params(paths.params_file())
    for model in params.study.models:
        encoder, decoder, autoencoder = keras_model(params.variant(model))
        for keras_part, name in zip((encoder, decoder), study_files(model)):
            keras_part.set_weights(in_layer_order(keras_part, read_keras_weights(args.weights / name)))
        outputs[model] = autoencoder.predict(images[..., None], verbose=0)[..., 0]
    np.savez_compressed(GOLDEN, **outputs)
    print(f"wrote {GOLDEN}")


def steps(args, data: dict) -> dict:
    """Same init and batches in both frameworks: step-0 forward difference and the two loss curves."""
    params = study_params(args.variant, args.padding)
    keras.utils.set_random_seed(args.seed)
    encoder, decoder, autoencoder = keras_model(params.variant(args.variant))
    trainer = Trainer(params, args.variant, args.seed, torch.device("cpu"), len(data["train"]))
    copy_keras_weights(trainer.model, keras_weights(encoder), keras_weights(decoder))
    if args.pytorch_eps:  # the port before the fix: PyTorch's own epsilon placement
        trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=STUDY["lr"], eps=STUDY["adam_eps"])
    order = np.random.default_rng(args.seed).permutation(len(data["train"]))
    rows, batch = [], 128
    for step in range(args.steps):
        x = data["train"][order[step * batch : (step + 1) * batch]]
        x_torch = torch.from_numpy(x[:, None]).contiguous(memory_format=torch.channels_last)
        if step == 0:
            trainer.model.eval()
            with torch.no_grad():
                forward_diff = float(
                    np.abs(autoencoder(x[..., None]).numpy()[..., 0] - trainer.model(x_torch)[:, 0].numpy()).max()
                )
        trainer.model.train()
        loss = torch.nn.functional.mse_loss(trainer.model(x_torch), x_torch)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        keras_loss = float(autoencoder.train_on_batch(x[..., None], x[..., None]))
        rows.append({"step": step, "keras_loss": keras_loss, "port_loss": loss.item()})
    frame = pd.DataFrame(rows)
    frame["relative_difference"] = frame.port_loss / frame.keras_loss - 1
    return {"seed": args.seed, "variant": args.variant, "forward_max_abs_difference_step0": forward_diff, "rows": rows}


def _output_name(mode: str, args) -> str:
    """keras_vs_port_<mode>, then what differs from model01 (and seed 0 for steps) with the port as it is."""
    variant = "" if args.variant == "model01" else f"_{args.variant}"
    seed = f"_seed{args.seed}" if mode == "steps" and args.seed != 0 else ""
    ablation = ("" if args.padding == "tensorflow" else "_symmetric") + ("_pytorch_eps" if args.pytorch_eps else "")
    return f"keras_vs_port_{mode}{variant}{seed}{ablation}"


def epochs(args, data: dict) -> dict:
    """Each framework as a user runs it; test MSE and dead units after every epoch, for every seed."""
    params, rows = study_params(args.variant, args.padding, args.epochs), _finished_rows(args)
    for seed in args.seeds:
        if {(r["framework"], r["epoch"]) for r in rows if r["seed"] == seed} >= _pairs(args.epochs):
            continue  # measured by an earlier run of this command (--resume)
        rows = [r for r in rows if r["seed"] != seed]
        keras.utils.set_random_seed(seed)
        encoder, decoder, autoencoder = keras_model(params.variant(args.variant))
        trainer = Trainer(params, args.variant, seed, torch.device("cpu"), len(data["train"]))
        train_torch = torch.from_numpy(data["train"][:, None])
        for epoch in range(args.epochs):
            started = time.perf_counter()
            autoencoder.fit(data["train"][..., None], data["train"][..., None], batch_size=128, epochs=1, verbose=0)
            keras_seconds = time.perf_counter() - started
            rows.append(_epoch_row("keras", seed, epoch, keras_seconds, *keras_metrics(encoder, decoder, data["test"])))
            started = time.perf_counter()
            trainer.train_epoch(train_torch, epoch)
            port_seconds = time.perf_counter() - started
            rows.append(_epoch_row("port", seed, epoch, port_seconds, *port_metrics(trainer.model, data["test"])))
            print(rows[-2], rows[-1], sep="\n", flush=True)
            write_outputs("epochs", {"variant": args.variant, "rows": rows}, args)
    return {"variant": args.variant, "rows": rows}


def _pairs(epochs: int) -> set[tuple[str, int]]:
    return {(framework, epoch) for framework in ("keras", "port") for epoch in range(1, epochs + 1)}


def _finished_rows(args) -> list[dict]:
    """With --resume: the rows of the last run of this command whose seeds trained all the epochs asked for."""
    path = OUT / f"{_output_name('epochs', args)}.json"
    if not (args.resume and path.exists()):
        return []
    rows = [r for r in json.loads(path.read_text())["rows"] if r["epoch"] <= args.epochs]
    return [
        r for r in rows if {(q["framework"], q["epoch"]) for q in rows if q["seed"] == r["seed"]} >= _pairs(args.epochs)
    ]


def _epoch_row(framework: str, seed: int, epoch: int, seconds: float, mse: float, dead: int) -> dict:
    return {
        "framework": framework,
        "seed": seed,
        "epoch": epoch + 1,
        "test_mse": mse,
        "dead_units": dead,
        "seconds": seconds,
    }


def epoch_summary(rows: list[dict]) -> pd.DataFrame:
    """Per epoch: both frameworks' mean test MSE over seeds, their ratio and Welch's p-value."""
    frame, summary = pd.DataFrame(rows), []
    for epoch, group in frame.groupby("epoch"):
        keras_mse, port_mse = (group[group.framework == f].test_mse.to_numpy() for f in ("keras", "port"))
        welch = (
            stats.ttest_ind(port_mse, keras_mse, equal_var=False) if min(len(keras_mse), len(port_mse)) > 1 else None
        )
        ratio = port_mse.mean() / keras_mse.mean()
        summary.append(
            {
                "epoch": epoch,
                "seeds": len(port_mse),
                "keras_mse_mean": keras_mse.mean(),
                "port_mse_mean": port_mse.mean(),
                "port_over_keras": ratio,
                "welch_p": welch.pvalue if welch else float("nan"),
                "within_20_percent": abs(ratio - 1) <= 0.2,
                "keras_dead_units": group[group.framework == "keras"].dead_units.tolist(),
                "port_dead_units": group[group.framework == "port"].dead_units.tolist(),
            }
        )
    return pd.DataFrame(summary)


def write_outputs(mode: str, result: dict, args) -> None:
    result = {**result, "command": args.command, "threads": torch.get_num_threads(), "keras": keras.__version__}
    frame = pd.DataFrame(result["rows"])
    versions = f"{result['threads']} threads, Keras {keras.__version__}, torch {torch.__version__}"
    text = f"# Keras vs port: {mode}\n\n`{args.command}` ({versions})\n\n"
    if mode == "epochs":
        text += epoch_summary(result["rows"]).to_markdown(index=False, floatfmt=".5g") + "\n\n## Every run\n\n"
    else:
        text += f"Forward difference at step 0 (max abs): {result['forward_max_abs_difference_step0']:.3g}\n\n"
        frame = frame[frame.step.isin([0, 1, 2, 5, 10, 20, 50, 100, 150, 200, 250, 299, args.steps - 1])]
    write_text(OUT / f"{_output_name(mode, args)}.md", text + frame.to_markdown(index=False, floatfmt=".5g") + "\n")
    write_json(OUT / f"{_output_name(mode, args)}.json", result)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.keras_side_by_side",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=["steps", "epochs", "golden"])
    parser.add_argument("--weights", type=Path, default=paths.root().parent / "shared/reference/study-weights")
    parser.add_argument("--data", type=Path, default=paths.root().parent / "shared/data/emnist-bymerge-test-resplit")
    parser.add_argument("--variant", default="model01")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=positive, default=300)
    parser.add_argument("--train-images", type=positive, default=None, help="the first N only (a quick trial)")
    parser.add_argument("--epochs", type=positive, default=3)
    parser.add_argument("--threads", type=non_negative, default=0)
    parser.add_argument("--resume", action="store_true", help="epochs: keep the seeds a killed run finished")
    parser.add_argument("--padding", choices=["tensorflow", "symmetric"], default="tensorflow", help="the port's")
    parser.add_argument("--pytorch-eps", action="store_true", help="steps: PyTorch's Adam epsilon in the port")
    args = parser.parse_args()
    args.command = "python -m benchmarks.keras_side_by_side " + " ".join(sys.argv[1:])
    configure_compute(args.threads)
    if args.mode == "golden":
        return golden(args)
    data = load_data(args.data)
    data["train"] = data["train"][: args.train_images]
    result = steps(args, data) if args.mode == "steps" else epochs(args, data)
    write_outputs(args.mode, result, args)
    print((OUT / f"{_output_name(args.mode, args)}.md").read_text())


if __name__ == "__main__":
    main()
