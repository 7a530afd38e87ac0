"""Training and evaluation speed against what this machine can do, measured side by side in one run.

Run from the repo root:  python -m benchmarks.bench_speed  (`make bench` runs it), on the prepared splits after
`dvc repro prepare`, or on random images of the same shape in a fresh clone. It measures the fp32 matmul peak,
counts each variant's training FLOPs per image (torch's FLOP counter), times the real training step
(pipeline.lib.training.Trainer) per variant for each precision x memory layout, the share of each step spent
fetching batches, and evaluation images/s, then prints utilisation = achieved FLOP/s / measured peak. Writes
reports/benchmarks.json and reports/benchmarks.md and logs both to MLflow as a `benchmark` run.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time

import mlflow
import pandas as pd
import torch

from pipeline import paths, tracking
from pipeline.lib import prepared
from pipeline.lib.config import load_params
from pipeline.lib.device import as_batch_tensor, configure_determinism, native_bf16, pick_device, processor_name
from pipeline.lib.evaluation import reconstruct_and_measure
from pipeline.lib.io import write_json, write_text
from pipeline.lib.models import inference_flops_per_image, training_flops_per_image
from pipeline.lib.trainer import Trainer

OPTIONS = {
    "fp32 NCHW": ("fp32", False),
    "fp32 channels_last": ("fp32", True),
    "bf16 NCHW": ("bf16", False),
    "bf16 channels_last": ("bf16", True),
}
OUT_JSON, OUT_MD = paths.reports_dir() / "benchmarks.json", paths.reports_dir() / "benchmarks.md"


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Best-of-n fp32 matrix multiply rate on the device, the ceiling a conv net can hope for there."""
    a, b = torch.rand(size, size, device=device), torch.rand(size, size, device=device)
    torch.mm(a, b)  # warm-up
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # CUDA kernels run asynchronously: wait for them before reading the clock
    return time.perf_counter() - started


def trainer_for(params, variant: str, precision: str, channels_last: bool, steps: int, n_images: int) -> Trainer:
    # two epochs: a warm-up and the timed one (a one-cycle schedule must be planned for both)
    train = dataclasses.replace(
        params.train_for(variant), precision=precision, channels_last=channels_last, steps_per_epoch=steps, epochs=2
    )
    params = dataclasses.replace(
        params,
        train=train,
        variants={variant: dataclasses.replace(params.variant(variant), train={})},
        matrix=[variant],
    )
    return Trainer(params, variant, 0, pick_device(train.device), train_images=n_images)


def training_rate(params, variant: str, option: str, train_x: torch.Tensor, steps: int) -> dict:
    """images/s of the real training loop after a warm-up, and the share of time spent fetching batches."""
    precision, channels_last = OPTIONS[option]
    trainer = trainer_for(params, variant, precision, channels_last, steps, len(train_x))
    trainer.train_epoch(train_x, epoch=0, progress=False)  # warm-up: allocator, oneDNN kernels
    seconds = timed(lambda: trainer.train_epoch(train_x, epoch=1, progress=False))
    fetch = timed(lambda: _fetch_only(trainer, train_x, epoch=1))
    return {"images_per_s": trainer.images_per_epoch / seconds, "data_fraction": fetch / seconds}


def _fetch_only(trainer: Trainer, train_x: torch.Tensor, epoch: int) -> None:
    """What train_epoch does to get its batches, without the model: the data-handling cost."""
    for _ in trainer.batches(train_x, epoch):
        pass


def evaluation_rows(params, variant: str, test_x: torch.Tensor, peak: float) -> list[dict]:
    """evaluate's main work (autoencoder and encoder->decoder passes plus per-image metrics) at evaluate.batch_size
    and at the 2048 it used before, side by side, with the share of the fp32 peak its passes reach."""
    model = trainer_for(params, variant, "fp32", True, 1, len(test_x)).model.eval()
    x = test_x.contiguous(memory_format=torch.channels_last)
    flops = sum(inference_flops_per_image(params.variant(variant), part) for part in ("forward", "encode", "decode"))
    rows = []
    for batch in dict.fromkeys((params.evaluate.batch_size, 2048)):
        cfg = dataclasses.replace(params.evaluate, batch_size=batch)
        rate = len(x) / timed(lambda cfg=cfg: reconstruct_and_measure(model, x, cfg))
        rows.append(
            {
                "variant": variant,
                "option": f"evaluate fp32 channels_last, batch {batch}",
                "images_per_s": rate,
                "eval_mflop_per_image": flops / 1e6,
                "gflops_per_s": rate * flops / 1e9,
                "utilisation": rate * flops / 1e9 / peak,
                "seconds_for_18800_at_peak": 18_800 * flops / 1e9 / peak,
            }
        )
        print(
            f"{variant:16s} evaluate, batch {batch}: {rate:.0f} img/s ({len(x) / rate:.1f} s for {len(x)} test "
            f"images, {rows[-1]['utilisation']:.1%} of peak; at 100% the 18,800: "
            f"{rows[-1]['seconds_for_18800_at_peak']:.1f} s)"
        )
    return rows


def run(variants: list[str], options: list[str], steps: int, eval_images: int) -> dict:
    params = load_params(paths.params_file())
    configure_determinism(params.train.threads)
    device = pick_device(params.train.device)
    peak, hardware = matmul_peak_gflops(device), processor_name(device)
    print(
        f"fp32 matmul peak: {peak:.1f} GFLOP/s on {hardware} ({torch.get_num_threads()} CPU threads, "
        f"native bf16: {native_bf16(device)})"
    )
    train_x, test_x, data = timing_images(device, steps * params.train.batch_size, eval_images)
    rows = []
    for variant in variants:
        flops = training_flops_per_image(params.variant(variant))
        for option in options:
            rate = training_rate(params, variant, option, train_x, steps)
            gflops = rate["images_per_s"] * flops / 1e9
            rows.append(
                {
                    "variant": variant,
                    "option": option,
                    "train_mflop_per_image": flops / 1e6,
                    **rate,
                    "gflops_per_s": gflops,
                    "utilisation": gflops / peak,
                }
            )
            print(
                f"{variant:16s} {option:20s} {rate['images_per_s']:7.0f} img/s  {gflops:6.1f} GFLOP/s  "
                f"{gflops / peak:6.1%} of peak  data {rate['data_fraction']:5.1%}"
            )
        rows.extend(evaluation_rows(params, variant, test_x, peak))
    return {
        "device": str(device),
        "hardware": hardware,
        "native_bf16": native_bf16(device),
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": peak,
        "train_steps_timed": steps,
        "data": data,
        "rows": rows,
    }


def timing_images(device: torch.device, train_images: int, eval_images: int):
    """The prepared train and test images if `prepare` has run, else random ones of the same shape (a step costs
    the same whatever the pixels): a fresh clone can measure its speed before downloading EMNIST."""
    if (paths.prepared_dir() / "manifest.json").exists():
        train = as_batch_tensor(prepared.load_split(paths.prepared_dir(), "train")[0], device)
        test = as_batch_tensor(prepared.load_split(paths.prepared_dir(), "test")[0][:eval_images], device)
        return train, test, "the prepared train and test splits"
    print(f"bench_speed: {paths.prepared_dir()} has no prepared data; timing on random images of the same shape")
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(n, 1, 28, 28, generator=generator).to(device) for n in (train_images, eval_images)]
    return *images, "random images (no prepared data)"


def write_outputs(result: dict) -> None:
    table = pd.DataFrame(result["rows"])
    markdown = (
        f"# Speed benchmark\n\nfp32 matmul peak {result['matmul_peak_gflops']:.1f} GFLOP/s on "
        f"{result['threads']} threads of {result['hardware']} ({result['device']}, native bf16: "
        f"{result['native_bf16']}); {result['train_steps_timed']} training steps "
        f"timed per row after a warm-up, on {result['data']}.\n\n"
        + table.to_markdown(index=False, floatfmt=".3g")
        + "\n"
    )
    write_json(OUT_JSON, result)
    write_text(OUT_MD, markdown)
    print(markdown)
    tracking.MlflowTracker()  # the project's store and experiment
    with tracking.tracked_run(run_name="benchmark", tags=tracking.run_tags("benchmark")):
        mlflow.log_metrics(mlflow_metrics(result))
        mlflow.log_artifact(str(OUT_JSON))
        mlflow.log_artifact(str(OUT_MD))


def mlflow_metrics(result: dict) -> dict[str, float]:
    """The result's numbers under names MLflow accepts ("evaluate fp32 channels_last, batch 256" has a comma)."""
    metrics = {"matmul_peak_gflops": result["matmul_peak_gflops"]}
    for row in result["rows"]:
        key = re.sub(r"[^0-9A-Za-z_.-]+", "_", f"{row['variant']}.{row['option']}")
        metrics.update({f"{key}.{k}": v for k, v in row.items() if isinstance(v, float)})
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["model01", "model02", "model03", "model04"])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per variant and option")
    parser.add_argument("--eval-images", type=int, default=18_800)
    args = parser.parse_args()
    write_outputs(run(args.variants, args.options, args.steps, args.eval_images))


if __name__ == "__main__":
    main()
