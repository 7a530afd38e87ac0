"""Training and evaluation speed against what this machine can do, measured side by side in one run.

Run from the repo root:  python -m benchmarks.bench_speed  (`make bench`), on the prepared splits after `dvc repro
prepare`, else on random images of the same shape (a step costs the same whatever the pixels). Per variant: training
FLOPs per image (torch's FLOP counter); the real training step's images/s for each option (precision x memory layout,
torch.compile, the C library's default allocator), with the share spent fetching batches and the page faults per
step; the ceiling, each conv and dense layer timed alone; evaluation's images/s at several batch sizes. Utilisation
is achieved FLOP/s over the best of matmul-peak samples spread over the run. Writes reports/benchmarks.json and .md
and logs both to MLflow as a `benchmark` run (--no-mlflow: the files only, on a machine without MLflow such as a
lent GPU machine; it needs torch, pandas, tabulate, pyyaml, tqdm and constriction).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import torch
import torch._dynamo
from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

from benchmarks.arguments import positive
from benchmarks.speed_report import write_outputs
from pipeline import paths
from pipeline.lib import prepared
from pipeline.lib.config import load_params
from pipeline.lib.device import (
    as_batch_tensor,
    configure_compute,
    keep_freed_memory,
    native_bf16,
    pick_device,
    processor_name,
)
from pipeline.lib.evaluation import reconstruct_and_measure
from pipeline.lib.models import inference_flops_per_image, training_flops_per_image
from pipeline.lib.trainer import Trainer

# option -> (precision, channels_last, train.compile)
OPTIONS = {
    "fp32 NCHW": ("fp32", False, "none"),
    "fp32 channels_last": ("fp32", True, "none"),
    "fp32 channels_last, torch.compile": ("fp32", True, "default"),
    "bf16 NCHW": ("bf16", False, "none"),
    "bf16 channels_last": ("bf16", True, "none"),
    "bf16 channels_last, torch.compile": ("bf16", True, "default"),
    "bf16 channels_last, torch.compile reduce-overhead": ("bf16", True, "reduce-overhead"),
}
# measured by default where CUDA is: bf16 is the GPU's precision, and the pair tells inductor's gain from the CUDA
# graphs'; on a CPU without native bf16 both would run emulated, and reduce-overhead adds no graphs there
GPU_ONLY = {"bf16 channels_last, torch.compile", "bf16 channels_last, torch.compile reduce-overhead"}
# measured first, before the pipeline's own setting (glibc adapts its default to what the process freed before)
DEFAULT_ALLOCATOR = "fp32 channels_last, C library's default allocator"
LAYERS_ALONE = "fp32 channels_last, conv and dense layers alone"
EVAL_BATCHES = (128, 256, 2048)  # evaluate's batch sizes measured beside params.yaml's: 2048 is the one it used first
# what torch.compile raises where inductor cannot build its C++ kernels (a backward compiled on first use: unwrapped)
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, CppCompileError, InvalidCxxCompiler)


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Best-of-n fp32 matrix multiply rate on the device, the ceiling a conv net can hope for there. On a shared
    machine one sample can catch a busy moment, so run() takes the best of samples spread over the whole run."""
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


def trainer_for(params, variant: str, option: tuple[str, bool, str], steps: int, n_images: int) -> Trainer:
    # two epochs: a warm-up and the timed one (a one-cycle schedule must be planned for both)
    precision, channels_last, compile_mode = option
    train = dataclasses.replace(
        params.train_for(variant),
        precision=precision,
        channels_last=channels_last,
        compile=compile_mode,
        steps_per_epoch=steps,
        epochs=2,
    )
    params = dataclasses.replace(
        params,
        train=train,
        variants={variant: dataclasses.replace(params.variant(variant), train={})},
        matrix=[variant],
    )
    return Trainer(params, variant, 0, pick_device(train.device), train_images=n_images)


def training_rate(params, variant: str, option: str, train_x: torch.Tensor, steps: int) -> dict:
    """images/s of the real training loop after a warm-up, the share of time spent fetching batches, and the minor
    page faults per step (counted by the kernel: the allocator's share, free of the machine's noise)."""
    settings = OPTIONS[option if option != DEFAULT_ALLOCATOR else "fp32 channels_last"]
    trainer = trainer_for(params, variant, settings, steps, len(train_x))
    trainer.train_epoch(train_x, epoch=0, progress=False)  # warm-up: allocator, oneDNN kernels, compilation
    faults = minor_faults()
    seconds = timed(lambda: trainer.train_epoch(train_x, epoch=1, progress=False))
    faults = minor_faults() - faults
    fetch = timed(lambda: _fetch_only(trainer, train_x, epoch=1))
    return {
        "images_per_s": trainer.images_per_epoch / seconds,
        "data_fraction": fetch / seconds,
        "page_faults_per_step": faults / trainer.steps_per_epoch,
    }


def minor_faults() -> int:
    """The process's minor page faults so far, counted by the kernel: free of the machine's load."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def layers_alone_rate(params, variant: str, device: torch.device, repeats: int = 10) -> dict:
    """The images/s a step could reach if it were nothing but its conv and dense layers, each timed alone, forward
    and backward (the first without an input gradient, as in training), best of `repeats`, on one batch's real
    activations: the convolution library's speed for these shapes, the ceiling the whole step is measured against."""
    batch = params.train_for(variant).batch_size
    model = trainer_for(params, variant, OPTIONS["fp32 channels_last"], 1, batch).model
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
    inputs = {}

    def keep_input(layer, args, output) -> None:  # a forward hook that returns something replaces the output
        inputs.setdefault(layer, args[0].detach())

    hooks = [layer.register_forward_hook(keep_input) for layer in layers]
    model(torch.rand(batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    # inputs holds the layers in the order the forward pass called them: the first is the one fed the images
    seconds = sum(_best_forward_backward(layer, x, i > 0, repeats) for i, (layer, x) in enumerate(inputs.items()))
    return {"images_per_s": batch / seconds}


def _best_forward_backward(layer: torch.nn.Module, x: torch.Tensor, input_grad: bool, repeats: int) -> float:
    x = x.clone().requires_grad_(input_grad)
    wrt = [*layer.parameters(), *([x] if input_grad else [])]
    grad = torch.randn_like(layer(x))
    step = lambda: torch.autograd.grad(layer(x), wrt, grad)  # noqa: E731
    step()
    return min(timed(step) for _ in range(repeats))


def _fetch_only(trainer: Trainer, train_x: torch.Tensor, epoch: int) -> None:
    """What train_epoch does to get its batches, without the model: the data-handling cost."""
    for _ in trainer.batches(train_x, epoch):
        pass


def evaluation_rows(params, variant: str, test_x: torch.Tensor) -> list[dict]:
    """evaluate's main work (autoencoder and encoder->decoder passes plus per-image metrics) at evaluate.batch_size
    and at EVAL_BATCHES, side by side, with the page faults per image (few once the heap keeps every freed block)."""
    model = trainer_for(params, variant, OPTIONS["fp32 channels_last"], 1, len(test_x)).model.eval()
    x = test_x.contiguous(memory_format=torch.channels_last)
    flops = sum(inference_flops_per_image(params.variant(variant), part) for part in ("forward", "encode", "decode"))
    rows = []
    for batch in dict.fromkeys((params.evaluate.batch_size, *EVAL_BATCHES)):
        cfg = dataclasses.replace(params.evaluate, batch_size=batch)
        faults = minor_faults()
        rate = len(x) / timed(lambda cfg=cfg: reconstruct_and_measure(model, x, cfg))
        faults = minor_faults() - faults
        rows.append(
            {
                "variant": variant,
                "option": f"evaluate fp32 channels_last, batch {batch}",
                "images_per_s": rate,
                "eval_mflop_per_image": flops / 1e6,
                "gflops_per_s": rate * flops / 1e9,
                "page_faults_per_image": faults / len(x),
            }
        )
        print(
            f"{variant:16s} evaluate, batch {batch}: {rate:.0f} img/s ({len(x) / rate:.1f} s for {len(x)} test images)"
            f"  {faults / len(x):6.1f} faults/image"
        )
    return rows


def run(variants: list[str], options: list[str], steps: int, eval_images: int) -> dict:
    params = load_params(paths.params_file())
    configure_compute(params.train.threads, keep_memory=False)  # the default allocator's rows first
    device, peaks = pick_device(params.train.device), []
    hardware = processor_name(device)
    print(f"{hardware}, {torch.get_num_threads()} CPU threads, native bf16: {native_bf16(device)}")
    train_x, test_x, data = timing_images(device, steps * params.train.batch_size, eval_images)

    flops = {variant: training_flops_per_image(params.variant(variant)) for variant in variants}

    def measure(variant: str, option: str) -> dict:  # with a peak sample after each row: the machine's best moment
        measured = row(params, variant, option, train_x, steps, flops[variant])
        peaks.append(matmul_peak_gflops(device))
        return measured

    peaks.append(matmul_peak_gflops(device))
    rows = [measure(variant, DEFAULT_ALLOCATOR) for variant in variants if DEFAULT_ALLOCATOR in options]
    keep_freed_memory()  # as every stage computes
    for variant in variants:
        rows += [measure(variant, option) for option in options if option != DEFAULT_ALLOCATOR]
        rows.extend(evaluation_rows(params, variant, test_x))
        peaks.append(matmul_peak_gflops(device))
    peak = max(peaks)
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s, the best of {len(peaks)} samples ({min(peaks):.1f} the lowest)")
    return {
        "device": str(device),
        "hardware": hardware,
        "native_bf16": native_bf16(device),
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": peak,
        "matmul_peak_samples": peaks,
        "train_steps_timed": steps,
        "data": data,
        "rows": [with_utilisation(measured, peak) for measured in rows],
    }


def with_utilisation(measured: dict, peak: float) -> dict:
    """The row's share of the run's peak; for evaluation, also the seconds its FLOPs take at that peak."""
    if "gflops_per_s" not in measured:  # a compiled row that failed: nothing was measured
        return measured
    shares = {"utilisation": measured["gflops_per_s"] / peak}
    if "eval_mflop_per_image" in measured:
        shares["seconds_for_18800_at_peak"] = 18_800 * measured["eval_mflop_per_image"] / 1e3 / peak
    return {**measured, **shares}


def row(params, variant: str, option: str, train_x: torch.Tensor, steps: int, flops: int) -> dict:
    compiled = OPTIONS.get(option, ("", False, "none"))[2] != "none"
    try:
        if option == LAYERS_ALONE:
            rate = layers_alone_rate(params, variant, train_x.device)
        else:
            rate = training_rate(params, variant, option, train_x, steps)
    except COMPILE_ERRORS as error:  # a machine without a C++ compiler still measures every other row
        if not compiled:
            raise
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        print(f"{variant:16s} {option:52s} failed: {reason}")
        return {"variant": variant, "option": option, "error": reason}
    finally:
        if compiled:
            torch._dynamo.reset()  # the compiled code and its guards are not carried into the next rows
    gflops = rate["images_per_s"] * flops / 1e9
    print(
        f"{variant:16s} {option:52s} {rate['images_per_s']:7.0f} img/s  {gflops:6.1f} GFLOP/s"
        + (
            f"  data {rate['data_fraction']:5.1%}  {rate['page_faults_per_step']:6.0f} faults/step"
            if option != LAYERS_ALONE
            else ""
        )
    )
    return {"variant": variant, "option": option, "train_mflop_per_image": flops / 1e6, **rate, "gflops_per_s": gflops}


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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["model01", "model02", "model03", "model04"])
    every = [DEFAULT_ALLOCATOR, *OPTIONS, LAYERS_ALONE]
    here = [option for option in every if torch.cuda.is_available() or option not in GPU_ONLY]
    parser.add_argument("--options", nargs="+", default=here, choices=every)
    parser.add_argument("--steps", type=positive, default=30, help="training steps timed per variant and option")
    parser.add_argument("--eval-images", type=positive, default=18_800)
    parser.add_argument("--no-mlflow", action="store_true", help="write the files only; log no MLflow run")
    args = parser.parse_args()
    write_outputs(run(args.variants, args.options, args.steps, args.eval_images), log_to_mlflow=not args.no_mlflow)


if __name__ == "__main__":
    main()
