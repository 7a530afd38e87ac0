"""One-off probe (2026-12-05): model01 training steps (the pipeline's Trainer, fp32 channels_last, batch 128, a
constant LR) with out-of-place ReLUs, as the models have them, against in-place ones: same weights, same batches
(random images, 20 steps an epoch), epochs alternating. Run from the repo root:
python reports/results/transposed-conv-2026-12-05/relu_inplace.py 6"""

import sys, time, dataclasses
import torch

sys.path.insert(0, ".")
from pipeline.lib.config import load_params
from pipeline.lib.device import configure_compute
from benchmarks.bench_speed import trainer_for, OPTIONS

params = load_params("params.yaml")
params = dataclasses.replace(params, train=dataclasses.replace(params.train, schedule="constant"))
configure_compute(0)
option = OPTIONS["fp32 channels_last"]
steps = 20
x = torch.rand(128 * steps, 1, 28, 28)


def make(inplace):
    t = trainer_for(params, "model01", option, steps, len(x))
    for m in t.model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = inplace
    return t


a, b = make(False), make(True)
b.model.load_state_dict(a.model.state_dict())
la = a.train_epoch(x, epoch=0, progress=False)
lb = b.train_epoch(x, epoch=0, progress=False)
print(
    "epoch0 losses",
    la,
    lb,
    "weights equal:",
    all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters())),
)
rates = {False: [], True: []}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
    for inplace, t in ((False, a), (True, b)) if r % 2 == 0 else ((True, b), (False, a)):
        s = time.perf_counter()
        t.train_epoch(x, epoch=1, progress=False)
        rates[inplace].append(128 * steps / (time.perf_counter() - s))
print({k: [round(v) for v in vs] for k, vs in rates.items()})
import statistics

print("median out-of-place", statistics.median(rates[False]), "in-place", statistics.median(rates[True]))
