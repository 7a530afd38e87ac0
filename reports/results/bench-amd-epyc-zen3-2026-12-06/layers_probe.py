"""Throw-away probe: each of model01's conv and dense layers alone, forward and backward (best of 10, one batch's
real activations, as bench_speed's ceiling row), with its FLOPs and its share of the fp32 matmul peak.
Run: COMPRESSNET_ROOT=<root> [BATCH=n] python layers_probe.py <label>  (ISA limits come from the environment)."""

import json
import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_speed as b
from pipeline.lib.config import load_params
from pipeline.lib.device import configure_compute

configure_compute(0)
params = load_params("params.yaml")
batch = int(os.environ.get("BATCH", params.train_for("model01").batch_size))
model = b.trainer_for(params, "model01", b.OPTIONS["fp32 channels_last"], 1, batch).model
layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
inputs = {}


def keep_input(layer, args, output) -> None:  # a hook that returned the tensor would replace the output
    inputs.setdefault(layer, args[0].detach())


hooks = [m.register_forward_hook(keep_input) for m in layers]
model(torch.rand(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last))
for h in hooks:
    h.remove()
peak = max(b.matmul_peak_gflops(torch.device("cpu")) for _ in range(3))
rows = []
for i, (layer, x) in enumerate(inputs.items()):
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        layer(x)
    flops = fc.get_total_flops() * (3 if i > 0 else 2)  # backward: weight gradient, and input gradient after the first
    s = b._best_forward_backward(layer, x, i > 0, 10)
    rows.append(dict(layer=repr(layer)[:60], input=list(x.shape[1:]), ms=1e3 * s, gflop=flops / 1e9,
                     gflops=flops / s / 1e9, of_peak=flops / s / 1e9 / peak))
peak = max(peak, *(b.matmul_peak_gflops(torch.device("cpu")) for _ in range(3)))
for r in rows:
    r["of_peak"] = r["gflops"] / peak
    print(f"{r['layer']:60s} {str(r['input']):16s} {r['ms']:7.2f} ms {r['gflop']:6.2f} GFLOP {r['gflops']:6.1f} GFLOP/s {100*r['of_peak']:5.1f}%")
total_ms, total = sum(r["ms"] for r in rows), sum(r["gflop"] for r in rows)
print(f"all: {total_ms:.1f} ms, {total:.2f} GFLOP, {total/total_ms*1e3:.1f} GFLOP/s = {100*total/total_ms*1e3/peak:.1f}% of peak {peak:.1f}")
json.dump(dict(label=sys.argv[1], batch=batch, env={k: v for k, v in os.environ.items() if k.startswith("OMP_")}, peak=peak, rows=rows), open(f"layers-{sys.argv[1]}.json", "w"), indent=1)
