"""Throw-away probe: model01's fp32 channels_last training step with denormals flushed to zero (FTZ/DAZ,
torch.set_flush_denormal) against the default, 20-step epochs alternating in one process after a warm-up,
and how many denormal values the gradients, optimizer state and activations hold.
Run: COMPRESSNET_ROOT=<root with prepared data> PYTHONPATH=. python denormal_probe.py"""

import dataclasses
import statistics
import time

import torch

from benchmarks import bench_speed as b
from pipeline.lib import prepared
from pipeline.lib.config import load_params
from pipeline.lib.device import as_batch_tensor, configure_compute, pick_device
from pipeline.lib.trainer import Trainer
from pipeline import paths

ROUNDS, STEPS = 8, 20
configure_compute(0)
params = load_params("params.yaml")
train = dataclasses.replace(params.train_for("model01"), precision="fp32", channels_last=True,
                            steps_per_epoch=STEPS, epochs=2 * ROUNDS + 1)
params = dataclasses.replace(params, train=train, matrix=["model01"],
                             variants={"model01": dataclasses.replace(params.variant("model01"), train={})})
x = as_batch_tensor(prepared.load_split(paths.prepared_dir(), "train")[0], torch.device("cpu"))
trainer = Trainer(params, "model01", 0, pick_device("cpu"), train_images=len(x))
trainer.train_epoch(x, epoch=0, progress=False)
rates = {False: [], True: []}
epoch = 1
for r in range(ROUNDS):
    for flush in ((False, True) if r % 2 == 0 else (True, False)):
        torch.set_flush_denormal(flush)
        started = time.perf_counter()
        trainer.train_epoch(x, epoch=epoch, progress=False)
        rates[flush].append(trainer.images_per_epoch / (time.perf_counter() - started))
        epoch += 1
torch.set_flush_denormal(False)
for flush, values in rates.items():
    print(f"flush denormals {flush!s:5}: median {statistics.median(values):6.1f} img/s  ({min(values):.1f}-{max(values):.1f})")


def denormal_share(tensors) -> str:
    tensors = [t.detach().float().flatten() for t in tensors if t is not None]
    n = sum(t.numel() for t in tensors)
    tiny = sum(((t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)).sum().item() for t in tensors)
    return f"{tiny} of {n} ({tiny / n:.2e})"


model = trainer.model
print("gradients:", denormal_share(p.grad for p in model.parameters()))
state = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
print("optimizer state:", denormal_share(state))
acts = []
hooks = [m.register_forward_hook(lambda m, a, o: acts.append(o)) for m in model.modules() if not list(m.children())]
with torch.no_grad():
    model(x[:128].contiguous(memory_format=torch.channels_last))
for h in hooks:
    h.remove()
print("activations:", denormal_share(acts))
