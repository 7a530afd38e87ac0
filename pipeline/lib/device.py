"""Where and how the pipeline computes: the device, the precision it can use natively, determinism and memory."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def processor_name(device: torch.device) -> str:
    """The processor a run's timings belong to: they differ several-fold between machines of the same size."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine() or "unknown CPU"


def native_bf16(device: torch.device) -> bool:
    """Whether the device has bf16 arithmetic: a CPU without AVX512-BF16 or AMX emulates it, many times slower
    than fp32 (reports/results/README.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision auto -> bf16 on hardware with native bf16, else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def deterministic_algorithms(warn_only: bool = False) -> None:
    """Deterministic algorithms on, and inductor's flag too once its config is loaded: the public call imports that
    config first, about 1.5 s of every stage, so it is made only where something compiles."""
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=warn_only)


def configure_compute(threads: int, keep_memory: bool = True) -> None:
    """Same seed, same thread count (0: all cores), same machine -> bit-identical weights (docs/reproducibility.md);
    and freed tensor memory kept for reuse (keep_freed_memory), which changes speed and resident memory, not results.
    keep_memory=False leaves the allocator as it is (the C library's own policy unless this process changed it: a
    change cannot be undone), for a benchmark's side-by-side row."""
    if keep_memory:
        keep_freed_memory()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    deterministic_algorithms()
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit Linux (HEAP_MAX_SIZE / 2)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, LARGEST_MMAP_THRESHOLD = -1, -3, -4, 32 << 20


def keep_freed_memory() -> None:
    """Keep freed blocks in the heap instead of handing them back to the OS. With glibc's defaults the activations of
    every training step (a 128-image batch of a 64-channel 28x28 map is 25.7 MB) are unmapped when freed and
    page-faulted back on the next step, a cost measured in reports/results/README.md (Training speed).
    Results are unchanged; the process keeps its peak resident memory. A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD)
        # and no block of the main thread's heap mapped on its own: above the largest threshold (evaluate's
        # 256-image batch of a 64-channel 28x28 map is 51 MB) glibc would still map each one and unmap it when freed
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)  # else the free top of the heap is handed back all the same
    except (OSError, AttributeError):  # macOS, musl or Windows: their allocators decide for themselves
        pass


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the OS (glibc's malloc_trim), for a process that kept it and now only
    waits, as the planner waits on `dvc exp run`. A no-op where the C library is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def as_batch_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] on the device, all at once."""
    return torch.from_numpy(images).to(device).unsqueeze(1).float().div_(255)


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch_size: int, bar: str | None = None) -> torch.Tensor:
    """fn over x, batch by batch; bar: the name of a progress bar over the batches (None: no bar)."""
    starts = tqdm(
        range(0, len(x), batch_size), desc=bar, unit="batch", leave=False, mininterval=1.0, disable=bar is None
    )
    return torch.cat([fn(x[i : i + batch_size]) for i in starts])
