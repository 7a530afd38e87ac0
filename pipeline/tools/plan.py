"""What `make repro` is about to do, and about how long it takes on this machine: printed before it starts.

    python -m pipeline.tools.plan                                   # the out-of-date stages of params.yaml
    python -m pipeline.tools.plan --profile pipeline/quick.yaml     # the quick profile's runs, as `make repro-quick`
    python -m pipeline.tools.plan --profile pipeline/quick.yaml --run [-S data.source=DIR]   # and run it

The estimate comes from a probe: a few training steps of each architecture to be trained, and the test split's
reconstruction and metrics on a slice, timed here and scaled. Streams, refinement and process start-ups are not in
it, so it is a floor. A profile is a YAML mapping of params keys (dotted) to values, applied as one DVC experiment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from dvc.repo import Repo

from pipeline import paths
from pipeline.cli import load_params
from pipeline.lib import prepared
from pipeline.lib.config import Params, parse_params
from pipeline.lib.device import configure_determinism, pick_device
from pipeline.lib.evaluation import reconstruct_and_measure
from pipeline.lib.io import DataError
from pipeline.lib.trainer import Trainer

BALANCED = {"train": 112_800, "test": 18_800}  # EMNIST-Balanced's split sizes, before prepare carves val from train
PROBE_STEPS, PROBE_IMAGES = 3, 1024


def with_profile(raw: dict, profile: dict) -> dict:
    """params.yaml's content with a profile's dotted keys set (as `dvc exp run -S` sets them)."""
    raw = yaml.safe_load(yaml.safe_dump(raw))
    for key, value in profile.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return raw


def out_of_date(root: Path, params: Params, profile: dict) -> tuple[list[tuple[str, int]], str]:
    """The runs whose training stage DVC would run, and what else it would run. A profile is an experiment that
    changes params: every run in its matrix is counted."""
    if profile:
        return params.runs(), "the other stages whose params it changes"
    changed = set(Repo(str(root)).status())
    runs = [(v, s) for v, s in params.runs() if f"train@{v}-{s}" in changed]
    others = [n for n in changed if not n.startswith(("train@", "evaluate@"))]
    return runs, f"{len(others)} other stage(s)"


def split_sizes(params: Params) -> dict[str, int]:
    try:
        return prepared.load_manifest(paths.prepared_dir())["counts"]
    except (DataError, KeyError):  # not prepared yet: the official sizes
        return {"train": round(BALANCED["train"] * (1 - params.data.val_fraction)), "test": BALANCED["test"]}


def seconds_per_image(params: Params, variant: str, device: torch.device) -> tuple[float, float]:
    """Training and evaluation seconds per image for this variant here, from a short probe on random images."""
    batch = params.train_for(variant).batch_size
    images = torch.rand(batch * (PROBE_STEPS + 1), 1, 28, 28, device=device)
    trainer = Trainer(params, variant, 0, device, len(images))
    trainer.train_epoch(images[:batch], 0)  # warm-up: first calls allocate and pick kernels
    started = time.perf_counter()
    trainer.train_epoch(images[batch:], 1)
    training = (time.perf_counter() - started) / (batch * PROBE_STEPS)
    started = time.perf_counter()
    reconstruct_and_measure(trainer.model, images[:PROBE_IMAGES], params.evaluate)
    return training, (time.perf_counter() - started) / min(PROBE_IMAGES, len(images))


def architecture(params: Params, variant: str) -> str:
    spec = {k: v for k, v in dataclasses.asdict(params.variant(variant)).items() if k != "description"}
    return yaml.safe_dump({**spec, "train": dataclasses.asdict(params.train_for(variant))}, sort_keys=True)


def estimate(params: Params, runs: list[tuple[str, int]]) -> tuple[float, float, dict[str, float]]:
    """Seconds of training and of evaluation for these runs, and the probed images/s per variant."""
    device = pick_device(params.train.device)
    configure_determinism(params.train.threads)
    sizes, probes, rates, train_s, eval_s = split_sizes(params), {}, {}, 0.0, 0.0
    for variant, _ in runs:
        key = architecture(params, variant)
        if key not in probes:
            probes[key] = seconds_per_image(params, variant, device)
        cfg = params.train_for(variant)
        per_epoch = min(sizes["train"], (cfg.steps_per_epoch or sizes["train"]) * cfg.batch_size)
        train_s += cfg.epochs * per_epoch * probes[key][0]
        eval_s += sizes["test"] * probes[key][1]
        rates[variant] = 1 / probes[key][0]
    return train_s, eval_s, rates


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def plan_lines(params: Params, profile: dict) -> list[str]:
    runs, others = out_of_date(paths.root(), params, profile)
    if not runs:
        return [f"plan: no training run is out of date; {others} to run"]
    variants = sorted({v for v, _ in runs}, key=[v for v, _ in runs].index)
    train_s, eval_s, rates = estimate(params, runs)
    speeds = ", ".join(f"{v} {rates[v]:.0f}" for v in variants[:3]) + (", …" if len(variants) > 3 else "")
    return [
        f"plan: {len(runs)} run(s) of {len(variants)} variant(s) to train and evaluate, and {others}",
        f"plan: images/s measured here by a {PROBE_STEPS}-step probe: {speeds}",
        f"plan: at least {minutes(train_s)} of training and {minutes(eval_s)} of evaluation, one stage at a time",
        "plan: faster: make repro JOBS=N runs independent stages at once on Ray (docs/scale-out.md)",
        *([] if profile else ["plan: a first look: make repro-quick (the quick profile, pipeline/quick.yaml)"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, help="a YAML mapping of dotted params keys to values")
    parser.add_argument("--run", action="store_true", help="then run the profile as a DVC experiment")
    parser.add_argument("-S", "--set-param", action="append", default=[], help="passed on to `dvc exp run`")
    args = parser.parse_args(argv)
    profile = yaml.safe_load(args.profile.read_text()) if args.profile else {}
    raw = yaml.safe_load(paths.params_file().read_text())
    params = parse_params(with_profile(raw, profile)) if profile else load_params(paths.params_file())
    for line in plan_lines(params, profile):
        print(line, flush=True)
    if not args.run:
        return 0
    sets = [f"{key}={json.dumps(value)}" for key, value in profile.items()]  # JSON is YAML, as DVC reads -S
    cmd = ["dvc", "exp", "run", *(f"--set-param={s}" for s in [*sets, *args.set_param])]
    code = subprocess.run(cmd, cwd=paths.root()).returncode
    print(
        "plan: params.yaml now holds the profile's values (DVC applies an experiment); `git checkout params.yaml` "
        "returns to the default"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
