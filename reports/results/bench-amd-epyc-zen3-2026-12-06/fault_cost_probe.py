"""Throw-away probe: what one minor page fault costs on this machine (first write to each fresh page of an anonymous
mapping, less the same writes again once the pages are mapped). python fault_cost_probe.py"""

import mmap
import resource
import time

PAGES = 100_000
for _ in range(3):
    memory = mmap.mmap(-1, PAGES * 4096)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    for offset in range(0, PAGES * 4096, 4096):
        memory[offset] = 1
    faulting = time.perf_counter() - started
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    started = time.perf_counter()
    for offset in range(0, PAGES * 4096, 4096):
        memory[offset] = 2
    mapped = time.perf_counter() - started
    print(f"{faults} faults, {(faulting - mapped) / faults * 1e6:.2f} us per fault")
    memory.close()
