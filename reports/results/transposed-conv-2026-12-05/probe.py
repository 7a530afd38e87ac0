"""One-off probe (2026-12-05): model01's stride-2 3x3 transposed convolution (64 -> 64 channels, 14x14 -> 28x28,
TensorFlow 'same' alignment) as the pipeline computes it, against two rewrites with the same parameters:
  padded: the input padded by one row and column before, then PyTorch's padding=2, output_padding=1 (no crop);
  phases: four stride-1 convolutions, one per output phase (even/odd row x even/odd column, 2x2, 2x1, 1x2 and 1x1
          taps of the same kernel), interleaved into the 28x28 output by strided assignment.
Median of 10 after 3 warm-ups, channels_last, fp32, freed memory kept as in the stages.
Run from the repo root: python reports/results/transposed-conv-2026-12-05/probe.py"""

import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
from pipeline.lib.device import keep_freed_memory  # noqa: E402
from pipeline.lib.models import SameConvTranspose2d  # noqa: E402


def padded(x, w, b):
    return F.conv_transpose2d(F.pad(x, (1, 0, 1, 0)), w, b, 2, 2, 1)


def phases(x, w, b):
    taps = {0: [2, 0], 1: [1]}  # even outputs: tap 2 of the previous input pixel, tap 0 of this one; odd: tap 1
    kernel = w.transpose(0, 1)
    xp = F.pad(x, (1, 0, 1, 0))
    inputs = {(0, 0): xp, (0, 1): xp[..., :, 1:], (1, 0): xp[..., 1:, :], (1, 1): x}
    n, _, h, wd = x.shape
    out = x.new_empty(n, w.shape[1], 2 * h, 2 * wd).contiguous(memory_format=torch.channels_last)
    for (row, col), inp in inputs.items():
        out[..., row::2, col::2] = F.conv2d(inp, kernel[:, :, taps[row]][:, :, :, taps[col]], b)
    return out


def median_ms(fn, repeats=10):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2] * 1000


def main():
    keep_freed_memory()  # as every stage does: no page faults from freed activations
    torch.manual_seed(0)
    layer = SameConvTranspose2d(64, 64, 3, 2)
    ways = {"pipeline": lambda x, w, b: layer(x), "padded": padded, "phases": phases}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in (128, 256):
        x = torch.rand(batch, 64, 14, 14).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            reference = layer(x)
            for name, way in ways.items():
                diff = (way(x, layer.weight, layer.bias) - reference).abs().max().item()
                ms = median_ms(lambda: way(x, layer.weight, layer.bias))
                print(f"batch {batch} forward   {name:8s} {ms:7.2f} ms  max |diff| {diff:.2e}")
        xg = x.clone().requires_grad_(True)
        grad = torch.rand_like(reference)
        for name, way in ways.items():

            def step():
                xg.grad = layer.weight.grad = layer.bias.grad = None
                way(xg, layer.weight, layer.bias).backward(grad)

            print(f"batch {batch} fwd+bwd   {name:8s} {median_ms(step):7.2f} ms")


if __name__ == "__main__":
    main()
