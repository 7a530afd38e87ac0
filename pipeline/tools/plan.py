"""What `make repro` is about to do, and about how long it takes on this machine: printed before it starts.

    python -m pipeline.tools.plan                                   # the out-of-date stages of params.yaml
    python -m pipeline.tools.plan --profile pipeline/quick.yaml     # the quick profile's runs, as `make repro-quick`
    python -m pipeline.tools.plan --profile pipeline/quick.yaml --run [-S data.source=DIR]   # and run it

The estimate comes from a probe: a few training steps of each architecture to be trained, and the test split's
reconstruction and metrics on a slice, timed here and scaled. Streams, refinement, the train stage's encoder pass
for the uint8 grid and process start-ups are not in it, so it is a floor. A profile is a YAML mapping of params
keys (dotted) to values, applied as one DVC experiment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
import torch
import yaml
from dvc.repo import Repo

from pipeline import paths
from pipeline.cli import load_params, one_line
from pipeline.lib import prepared
from pipeline.lib.config import Params, parse_params
from pipeline.lib.device import configure_compute, pick_device
from pipeline.lib.evaluation import reconstruct_and_measure
from pipeline.lib.io import DataError
from pipeline.lib.trainer import Trainer
from pipeline.provenance import stage_name

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


def out_of_date(root: Path, params: Params, overrides: dict) -> tuple[list, list, str]:
    """The runs DVC would train, those it would evaluate, and what else it would run: every stage DVC finds changed
    and every stage downstream of one. With overrides (an experiment that changes params) every run is counted."""
    if overrides:
        return params.runs(), params.runs(), "the other stages whose params it changes"
    repo = Repo(str(root))
    graph, changed = repo.index.graph, set(repo.status())
    to_run = set(changed)
    for stage in (s for s in graph.nodes if s.addressing in changed):
        to_run |= {downstream.addressing for downstream in nx.ancestors(graph, stage)}  # edges point upstream
    trains = [(v, s) for v, s in params.runs() if stage_name("train", v, s) in to_run]
    evaluations = [(v, s) for v, s in params.runs() if stage_name("evaluate", v, s) in to_run]
    others = [n for n in to_run if not n.startswith(("train@", "evaluate@"))]
    return trains, evaluations, f"{len(others)} other stage(s)"


def split_sizes(params: Params) -> dict[str, int]:
    try:
        return prepared.load_manifest(paths.prepared_dir())["counts"]
    except (DataError, KeyError):  # not prepared yet: the official sizes
        return {"train": round(BALANCED["train"] * (1 - params.data.val_fraction)), "test": BALANCED["test"]}


def seconds_per_image(params: Params, variant: str, device: torch.device) -> tuple[float, float]:
    """Training and evaluation seconds per image for this variant here, from a short probe on random images (a
    constant learning rate: the probe's few steps would end a short one-cycle schedule)."""
    batch = params.train_for(variant).batch_size
    images = torch.rand(batch * (PROBE_STEPS + 1), 1, 28, 28, device=device)
    trainer = Trainer(params, variant, 0, device, len(images))
    trainer.scheduler, trainer.images_per_epoch = None, batch * PROBE_STEPS
    trainer.train_epoch(images[:batch], 0, progress=False)  # warm-up: first calls allocate and pick kernels
    started = time.perf_counter()
    trainer.train_epoch(images[batch:], 1, progress=False)
    training = (time.perf_counter() - started) / (batch * PROBE_STEPS)
    probe = images[:PROBE_IMAGES]
    reconstruct_and_measure(trainer.model, probe[:64], params.evaluate)  # warm-up
    started = time.perf_counter()
    reconstruct_and_measure(trainer.model, probe, params.evaluate)
    return training, (time.perf_counter() - started) / len(probe)


def architecture(params: Params, variant: str) -> str:
    spec = {k: v for k, v in dataclasses.asdict(params.variant(variant)).items() if k != "description"}
    return yaml.safe_dump({**spec, "train": dataclasses.asdict(params.train_for(variant))}, sort_keys=True)


def estimate(params: Params, trains: list, evaluations: list) -> tuple[float, float, dict[str, float]]:
    """Seconds of training and of evaluation for these runs, and the probed images/s per variant."""
    device = pick_device(params.train.device)
    configure_compute(params.train.threads)
    sizes, probes, by_variant = split_sizes(params), {}, {}
    for variant in dict.fromkeys(v for v, _ in [*trains, *evaluations]):
        key = architecture(params, variant)
        if key not in probes:
            probes[key] = seconds_per_image(params, variant, device)
        by_variant[variant] = probes[key]  # (training, evaluation) seconds per image
    train_s = 0.0
    for variant, _ in trains:
        cfg = params.train_for(variant)
        per_epoch = min(sizes["train"], (cfg.steps_per_epoch or sizes["train"]) * cfg.batch_size)
        train_s += cfg.epochs * per_epoch * by_variant[variant][0]
    eval_s = sum(sizes["test"] * by_variant[variant][1] for variant, _ in evaluations)
    return train_s, eval_s, {variant: 1 / seconds[0] for variant, seconds in by_variant.items()}


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def plan_lines(params: Params, overrides: dict, profile: bool = False) -> list[str]:
    trains, evaluations, others = out_of_date(paths.root(), params, overrides)
    if not trains and not evaluations:
        return [f"plan: no run to train or evaluate; {others} to run"]
    head = f"plan: {len(trains)} run(s) to train, {len(evaluations)} to evaluate, and {others}"
    try:
        train_s, eval_s, rates = estimate(params, trains, evaluations)
    except Exception as err:  # an estimate is advice: its failure must not stop the run
        return [head, f"plan: no time estimate ({one_line(err)})"]
    speeds = ", ".join(f"{v} {r:.0f}" for v, r in list(rates.items())[:3]) + (", …" if len(rates) > 3 else "")
    return [
        head,
        f"plan: images/s measured here by a {PROBE_STEPS}-step probe: {speeds}",
        f"plan: at least {minutes(train_s)} of training and {minutes(eval_s)} of evaluation, one stage at a time",
        "plan: faster: make repro JOBS=N runs independent stages at once on Ray (docs/scale-out.md)",
        *([] if profile else ["plan: a first look: make repro-quick (the quick profile, pipeline/quick.yaml)"]),
    ]


def hydra_value(value) -> str:
    """A value as `dvc exp run -S` reads it (Hydra's override grammar, not YAML): quoted strings, bare numbers,
    booleans and null, lists of those."""
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)  # a backslash escapes only before '
        return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted) + "'"
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    raise ValueError(f"a profile value must be a number, string, boolean, null or list of those, not {value!r}")


def parse_sets(sets: list[str]) -> dict:
    """`key=value` pairs (as given to `dvc exp run -S`) as a profile: dotted key -> value."""
    pairs = [item.split("=", 1) for item in sets]
    if bad := [item for item, pair in zip(sets, pairs) if len(pair) != 2]:
        raise SystemExit(f"plan: -S takes key=value, got {bad[0]!r}")
    return {key: yaml.safe_load(value) for key, value in pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, help="a YAML mapping of dotted params keys to values")
    parser.add_argument("--run", action="store_true", help="then run the profile as a DVC experiment")
    parser.add_argument("-S", "--set-param", action="append", default=[], help="passed on to `dvc exp run`")
    args = parser.parse_args(argv)
    profile = yaml.safe_load(args.profile.read_text()) if args.profile else {}
    overrides = {**profile, **parse_sets(args.set_param)}
    raw = yaml.safe_load(paths.params_file().read_text())
    params = parse_params(with_profile(raw, overrides)) if overrides else load_params(paths.params_file())
    for line in plan_lines(params, overrides, profile=bool(profile)):
        print(line, flush=True)
    if not args.run:
        return 0
    sets = [*(f"{key}={hydra_value(value)}" for key, value in profile.items()), *args.set_param]
    code = subprocess.run(["dvc", "exp", "run", *(f"--set-param={s}" for s in sets)], cwd=paths.root()).returncode
    if code == 0:
        print("plan: params.yaml now holds the experiment's values; `git checkout params.yaml` returns to the default")
    return code


if __name__ == "__main__":
    sys.exit(main())
