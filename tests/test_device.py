"""pipeline.lib.device.keep_freed_memory: a training step stops page-faulting its activations back in; every stage's
configure_compute asks for it, a benchmark's default-allocator row does not."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from pipeline.lib import device
from tests.conftest import REPO

# minor page faults per training step of a small conv net whose activations (12.8 MB each) exceed glibc's
# default mmap threshold; page faults are counted by the kernel, so this holds on a loaded machine too
STEP_FAULTS = """
import resource, sys, torch
from pipeline.lib.device import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
torch.set_num_threads(1)
conv = lambda c_in, c_out: torch.nn.Conv2d(c_in, c_out, 3, padding=1)
model = torch.nn.Sequential(conv(1, 64), torch.nn.ReLU(), conv(64, 64), torch.nn.ReLU(), conv(64, 1))
x = torch.rand(64, 1, 28, 28)
def step():
    torch.nn.functional.mse_loss(model(x), x).backward()
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


# minor page faults per elementwise op on a 48 MB tensor (the median of 15 ops): above 32 MiB, the largest mmap
# threshold glibc accepts, so only turning off separately mapped blocks keeps it (evaluate's 256-image batches of
# 64-channel maps are 51 MB)
LARGE_OP_FAULTS = """
import resource, statistics, sys, torch
from pipeline.lib.device import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
x = torch.rand(12_000_000)
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = x * 2
    del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(statistics.median(faults[5:])))  # the median: the heap settles after a few ops, their number varies
"""


def run_script(script: str, *args: str) -> str:
    """What a fresh interpreter prints running `script` at the repo root (the allocator as a new process has it)."""
    command = [sys.executable, "-c", script, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout


def step_faults(mode: str, script: str = STEP_FAULTS) -> int:
    return int(run_script(script, mode))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator; elsewhere the call is a no-op")
def test_kept_memory_is_not_faulted_back_in_on_every_step():
    default, kept = step_faults("default"), step_faults("keep")
    assert default > 2_000  # each step maps its activations afresh: ~3,100 pages per 12.8 MB map
    assert kept < default / 5


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator; elsewhere the call is a no-op")
def test_kept_memory_covers_blocks_above_glibcs_largest_mmap_threshold():
    default, kept = step_faults("default", LARGE_OP_FAULTS), step_faults("keep", LARGE_OP_FAULTS)
    assert default > 5_000  # the 48 MB result mapped afresh each time: ~11,700 pages
    assert kept < default / 5


# resident memory after a kept 48 MB block is freed, then after release_freed_memory
RELEASED = """
import torch
from pipeline.lib.device import keep_freed_memory, release_freed_memory
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e6
keep_freed_memory()
x = torch.ones(12_000_000)
del x
kept = resident_mb()
release_freed_memory()
print(kept, resident_mb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator; elsewhere the call is a no-op")
def test_kept_memory_is_handed_back_on_release():
    kept, released = map(float, run_script(RELEASED).split())
    assert kept - released > 40  # the 48 MB block, of which the OS had every page


@pytest.mark.parametrize("keep_memory, calls", [(True, 1), (False, 0)])
def test_configure_compute_keeps_freed_memory_unless_told_not_to(monkeypatch, keep_memory, calls):
    kept = []
    monkeypatch.setattr(device, "keep_freed_memory", lambda: kept.append(True))
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # this test process keeps its threads
    device.configure_compute(1, keep_memory=keep_memory)
    assert len(kept) == calls
