"""One device shared by many training runs: images/s for 1, 2, 4 and 8 concurrent runs (separate processes, as
Ray's fractional GPUs run them), and for 1, 2, 4 and 8 seeds batched in one process (pipeline.lib.seed_batch).

    python -m benchmarks.bench_share                      # on the GPU (make bench-matrix runs it when one is there)
    python -m benchmarks.bench_share --device cpu --steps 3 --warmup 1 --concurrent 1 2 --seed-batch 1 2

Every run trains the variant (default model01 of params.yaml, batch 128, fp32) on random images already on the
device, so the figure is the device's, not the data loader's. Each run first takes --warmup steps (cuDNN's and the
allocator's first calls), then all runs start together and each times --steps steps; images/s of N runs is
N x steps x batch / the slowest run's time. Adds "device_sharing" to reports/benchmarks_matrix.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing.connection
import sys
import threading
from pathlib import Path

import torch
import torch.multiprocessing as mp
import yaml

from benchmarks.arguments import non_negative, positive
from benchmarks.bench_speed import timed
from pipeline import paths
from pipeline.lib.config import Params, parse_params
from pipeline.lib.device import configure_compute, pick_device
from pipeline.lib.io import write_json
from pipeline.lib.seed_batch import SeedBatch
from pipeline.lib.trainer import Trainer

START_TIMEOUT_S = 600  # for a run that hangs before the start: the parent aborts the start when one fails


def images(batch: int, steps: int, device: torch.device) -> torch.Tensor:
    return torch.rand(batch * steps, 1, 28, 28, device=device)


def bench_params(args) -> Params:
    """params.yaml with the steps of an epoch left to the data given, on the chosen device and threads."""
    raw = yaml.safe_load(paths.params_file().read_text())
    raw["train"].update(steps_per_epoch=None, device=args.device, threads=args.threads, precision="fp32")
    return parse_params(raw)


def one_run(args, seeds: list[int], start=None) -> float:
    """Seconds for --steps steps of these seeds (one Trainer, or a SeedBatch of several), after --warmup steps."""
    params = bench_params(args)
    device = pick_device(args.device)
    configure_compute(args.threads)
    batch = params.train_for(args.variant).batch_size
    data = images(batch, max(args.steps, args.warmup), device)
    if len(seeds) == 1:
        epoch = functools.partial(
            Trainer(params, args.variant, seeds[0], device, len(data)).train_epoch, progress=False
        )
    else:
        epoch = SeedBatch(params, args.variant, seeds, device, len(data)).train_epoch
    epoch(data[: args.warmup * batch], 0)
    if start is not None:
        start.wait(timeout=START_TIMEOUT_S)
    return timed(lambda: epoch(data[: args.steps * batch], 1))


def worker(args, start, results, index: int) -> None:
    try:
        results[index] = one_run(args, [index], start)
    except threading.BrokenBarrierError:  # the failed run's own error is the one to read: no traceback here
        sys.exit(f"bench_share: run {index} stopped: another run failed, or one took over {START_TIMEOUT_S} s to start")


def concurrent(args, count: int) -> float:
    """Images/s of `count` runs in separate processes started together."""
    context = mp.get_context("spawn")
    start, results = context.Barrier(count), context.Manager().dict()
    processes = [context.Process(target=worker, args=(args, start, results, i)) for i in range(count)]
    for process in processes:
        process.start()
    join_all(processes, start)
    if len(results) != count:
        sys.exit(f"bench_share: {count - len(results)} of {count} runs failed or were stopped (see above)")
    return count * args.steps * batch_size(args) / max(results.values())


def join_all(processes: list, start) -> None:
    """Waits for every process; the first that fails aborts the barrier `start`, so that the runs waiting there for
    it stop at once instead of at the barrier's timeout."""
    running = {process.sentinel: process for process in processes}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            process = running.pop(sentinel)
            process.join()
            if process.exitcode != 0:
                start.abort()


def batched(args, count: int) -> float:
    return count * args.steps * batch_size(args) / one_run(args, list(range(count)))


def batch_size(args) -> int:
    return bench_params(args).train_for(args.variant).batch_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_share",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variant", default="model01")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=non_negative, default=1, help="torch CPU threads per run")
    parser.add_argument("--steps", type=positive, default=200)
    parser.add_argument("--warmup", type=non_negative, default=20)
    parser.add_argument("--concurrent", type=positive, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seed-batch", type=positive, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path, default=paths.reports_dir() / "benchmarks_matrix.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_share: no GPU here; device sharing not measured")
        return 0
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device, "variant": args.variant}
    result |= {"batch": batch_size(args), "steps": args.steps, "images_per_s_concurrent_runs": {}}
    for count in args.concurrent:
        result["images_per_s_concurrent_runs"][str(count)] = round(concurrent(args, count))
        print(f"{count} concurrent run(s): {result['images_per_s_concurrent_runs'][str(count)]} images/s", flush=True)
    result["images_per_s_seeds_batched"] = {}
    for count in args.seed_batch:
        result["images_per_s_seeds_batched"][str(count)] = round(batched(args, count))
        print(f"{count} seed(s) in one process: {result['images_per_s_seeds_batched'][str(count)]} images/s")
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    write_json(args.out, {**existing, "device_sharing": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
