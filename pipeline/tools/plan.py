"""What `make repro` is about to do, and about how long it takes on this machine: printed before it starts.

    python -m pipeline.tools.plan                                   # the out-of-date stages of params.yaml
    python -m pipeline.tools.plan --profile pipeline/quick.yaml     # the quick profile's stages, as `make repro-quick`
    python -m pipeline.tools.plan --profile pipeline/quick.yaml --run [-S data.source=DIR]   # and run it

The stages are those DVC finds out of date, those whose params a profile changes, and everything downstream. The
estimate adds up short probes of each kind of work and each stage's start-up, timed here and scaled to the splits
(pipeline.tools.plan_probe). A profile is a YAML mapping of params keys (dotted) to values, applied as one DVC
experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import yaml
from dvc.dependency.param import ParamsDependency
from dvc.exceptions import DvcException
from dvc.repo import Repo
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from pipeline import paths
from pipeline.cli import load_params, one_line, os_error_line
from pipeline.lib import prepared
from pipeline.lib.config import ConfigError, Params, parse_params
from pipeline.lib.config_sections import STUDY_SOURCE
from pipeline.lib.device import pick_device, release_freed_memory
from pipeline.lib.idx import find_split_files, read_idx
from pipeline.lib.io import DataError
from pipeline.lib.report_findings import counted
from pipeline.provenance import stage_name
from pipeline.tools import plan_probe
from pipeline.tools.child_path import path_with_this_python
from pipeline.tools.plan_downloads import download_lines
from pipeline.tools.stage_clock import duration

BALANCED = {"train": 112_800, "test": 18_800}  # EMNIST-Balanced's split sizes, before prepare carves val from train
MATRIX_KINDS = ("train@", "evaluate@", "study@")
MISSING = object()
NOTHING_TO_RUN = "plan: nothing to run: every stage is up to date"
EDITED_PARAMS = (
    "plan: params.yaml is not the committed one (a profile's experiment leaves its values there: `git diff "
    "params.yaml`); `git checkout params.yaml` returns to the default"
)


def with_profile(raw: dict, profile: dict) -> dict:
    """params.yaml's content with a profile's dotted keys set (as `dvc exp run -S` sets them)."""
    raw = yaml.safe_load(yaml.safe_dump(raw))
    for key, value in profile.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: params.yaml has no section {'.'.join(parents)}")
        node[leaf] = value
    return raw


def current_value(raw: dict, key: str):
    """The value of a dotted key in params.yaml's content; MISSING where it has none."""
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def reads(stage, keys: set[str]) -> bool:
    """Whether a DVC stage declares one of these dotted params keys, a section holding one, or a key inside one."""
    declared = [key for dep in stage.deps if isinstance(dep, ParamsDependency) for key in dep.params]
    return any(d == k or k.startswith(f"{d}.") or d.startswith(f"{k}.") for d in declared for k in keys)


def out_of_date(root: Path, params: Params, changed_keys: set[str]) -> tuple[dict[str, list], list[str]]:
    """The (variant, seed) runs DVC would "train" and "evaluate", and the other stages it would run: every stage
    DVC finds changed or whose params a profile changes (changed_keys), every stage downstream of one, and every
    stage the profile adds. params are the profile's."""
    repo = Repo(str(root))
    graph = repo.index.graph
    stages = {stage.addressing: stage for stage in graph.nodes}
    changed = set(repo.status()) | {name for name, stage in stages.items() if reads(stage, changed_keys)}
    to_run = set(changed)
    for stage in (stages[name] for name in changed if name in stages):
        to_run |= {downstream.addressing for downstream in nx.ancestors(graph, stage)}  # edges point upstream

    def will_run(name: str) -> bool:
        return name in to_run or name not in stages  # a stage the profile adds runs too

    runs = {kind: [run for run in params.runs() if will_run(stage_name(kind, *run))] for kind in ("train", "evaluate")}
    studies = [name for name in (f"study@{model}" for model in params.study.models) if will_run(name)]
    others = [name for name in stages if name in to_run and name != "report" and not name.startswith(MATRIX_KINDS)]
    added = [
        name for name in [*studies, *(stage_name(k, *r) for k, rs in runs.items() for r in rs)] if name not in stages
    ]
    report = "report" in stages and ("report" in to_run or bool(added))  # downstream of every run
    return runs, [*others, *studies, *(["report"] if report else [])]


def split_sizes(params: Params) -> dict[str, int]:
    """The prepared splits' sizes; not prepared yet, those prepare will make from data.source."""
    try:
        return prepared.load_manifest(paths.prepared_dir())["counts"]
    except (DataError, KeyError):
        train, test = source_sizes(paths.resolve_source(params.data.source))
    val = round(train * params.data.val_fraction)
    return {"train": train - val, "val": val, "test": test}


def source_sizes(source: Path) -> tuple[int, int]:
    """A directory's train and test sizes, counted in its label files (kilobytes); the official download's
    (a listing of the files to fetch, or a directory that cannot be read: prepare will say why)."""
    try:
        files = find_split_files(source) if source.is_dir() else None
        labels = [read_idx(files[f"{split}_labels"], "labels") for split in ("train", "test")] if files else None
    except DataError:
        labels = None
    return (len(labels[0]), len(labels[1])) if labels else (BALANCED["train"], BALANCED["test"])


def plan_lines(params: Params, changed_keys: set[str], profile: bool = False, startup: float = 0.0) -> list[str]:
    """startup: seconds a stage's process takes to start (this one's, measured before the plan)."""
    runs, others = out_of_date(paths.root(), params, changed_keys)
    if not runs["train"] and not runs["evaluate"] and not others:
        return [NOTHING_TO_RUN]
    head = f"plan: {len(runs['train'])} run(s) to train, {len(runs['evaluate'])} to evaluate, and {len(others)} other "
    head += f"stage(s){': ' + ', '.join(others) if others and len(others) <= 6 else ''}"
    try:
        est = plan_probe.estimate(params, split_sizes(params), runs, others, startup)
    except Exception as err:  # an estimate is advice: its failure must not stop the run
        return [head, f"plan: no time estimate ({one_line(err)})", *download_lines(params, others)]
    speeds = ", ".join(f"{v} {r:.0f}" for v, r in list(est.rates.items())[:3]) + (", …" if len(est.rates) > 3 else "")
    return [
        head,
        *([f"plan: training images/s from a {plan_probe.PROBE_STEPS}-step probe here: {speeds}"] if speeds else []),
        f"plan: about {duration(est.total)} one stage at a time: {duration(est.train)} of training, "
        f"{duration(est.evaluate)} of evaluation, {duration(est.other)} in the other stages and "
        f"{duration(est.startup * est.stages)} of start-up ({est.stages} × {est.startup:.0f} s)",
        *download_lines(params, others),
        parallel_line(pick_device(params.train.device).type, os.cpu_count() or 1, params.train.threads),
        *([] if profile else ["plan: a first look: make repro-quick (the quick profile, pipeline/quick.yaml)"]),
    ]


def parallel_line(device: str, cores: int, threads: int) -> str:
    """JOBS=N as what it does here. On a GPU the N stages share it; on a CPU alone each stage takes train.threads
    cores (0: all of them, as the stages count them), so N stages that each take all split them (measured on 2
    cores in reports/results/README.md: two 1-thread runs trained fewer images/s than one 2-thread run)."""
    if device == "cuda":
        return "plan: in parallel: make repro JOBS=N runs N stages at once on Ray, sharing the GPU (docs/scale-out.md)"
    start = "plan: in parallel: make repro JOBS=N runs N stages at once on Ray"
    if 0 < threads < cores:
        return (
            f"{start}; each takes {threads} of the {counted(cores, 'CPU core')} here (train.threads; docs/scale-out.md)"
        )
    return (
        f"{start}, but each already takes the {counted(cores, 'CPU core')} here (train.threads), so they would "
        "split them: it pays where one stage leaves cores or a GPU idle (docs/scale-out.md)"
    )


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
    raise ConfigError(f"a profile value must be a number, string, boolean, null or list of those, not {value!r}")


def parse_sets(sets: list[str]) -> dict:
    """`key=value` pairs as a profile (dotted key -> value), read as `dvc exp run -S` reads them: Hydra's override
    grammar, where 1e-3 is a number (YAML would read a string)."""
    try:
        overrides = OverridesParser.create().parse_overrides(sets)
    except OverrideParseException as err:
        raise ConfigError(f"-S takes key=value as `dvc exp run -S` does: {one_line(err)}") from None
    if deleted := [o.key_or_group for o in overrides if o.is_delete()]:
        raise ConfigError(f"-S ~{deleted[0]}: the plan sets keys; it does not delete them")
    if swept := [o.input_line for o in overrides if o.is_sweep_override()]:
        raise ConfigError(f"-S {swept[0]}: a sweep; the plan takes one value per key (a list is written [a,b])")
    return {override.key_or_group: override.value() for override in overrides}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", type=Path, help="a YAML mapping of dotted params keys to values")
    parser.add_argument("--run", action="store_true", help="then run the profile as a DVC experiment")
    parser.add_argument("-S", "--set-param", action="append", default=[], help="passed on to `dvc exp run`")
    args = parser.parse_args(argv)
    try:
        return plan(args)
    except (ConfigError, DataError, yaml.YAMLError, DvcException) as err:  # DvcException: its lock held elsewhere
        print(f"plan: error: {one_line(err)}", file=sys.stderr)
    except OSError as err:  # a profile that is not there, a params file that cannot be read
        print(f"plan: error: {os_error_line(err)}", file=sys.stderr)
    return 1


def params_edited(root: Path) -> bool:
    """Whether params.yaml differs from the committed one (False without git or a commit: nothing to compare with)."""
    if shutil.which("git") is None:
        return False
    inside = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=root, capture_output=True).returncode == 0
    command = ["git", "diff", "--quiet", "HEAD", "--", "params.yaml"]  # exit status 1: it differs
    return inside and subprocess.run(command, cwd=root, capture_output=True).returncode == 1


def check_sources(params: Params) -> None:
    """A data or study directory that is not there, said before DVC starts: it would first delete the outputs of
    the stage that reads it."""
    data, study = params.data.source, params.study.source
    if not paths.resolve_source(data).exists():
        raise DataError(f"data.source {data}: no such directory (make repro DATA=<a directory of IDX files>)")
    if study != STUDY_SOURCE and not paths.project_path(study).is_dir():
        raise DataError(f"study.source {study}: no such directory (make repro STUDY=<the study's weights>)")


def plan(args: argparse.Namespace) -> int:
    startup = plan_probe.startup_seconds()
    profile = yaml.safe_load(args.profile.read_text()) if args.profile else {}
    if not isinstance(profile, dict):
        raise ConfigError(f"{args.profile}: a profile is a mapping of dotted params keys to values")
    overrides = {**profile, **parse_sets(args.set_param)}
    raw = yaml.safe_load(paths.params_file().read_text())
    params = parse_params(with_profile(raw, overrides)) if overrides else load_params(paths.params_file())
    check_sources(params)
    sets = [*(f"{key}={hydra_value(value)}" for key, value in profile.items()), *args.set_param]  # before the probe
    changed = {key for key, value in overrides.items() if current_value(raw, key) != value}
    lines = plan_lines(params, changed, profile=bool(profile), startup=startup)
    if not overrides and params_edited(paths.root()):
        lines.append(EDITED_PARAMS)
    for line in lines:
        print(line, flush=True)
    if not args.run:
        return 0
    if lines[0] == NOTHING_TO_RUN:  # an experiment now would only repeat the last one
        print("plan: so no experiment is started")
        return 0
    command = ["dvc", "exp", "run", *(f"--set-param={s}" for s in sets)]
    release_freed_memory()  # the probe's, which this process would otherwise hold while every stage runs
    code = subprocess.run(command, cwd=paths.root(), env={**os.environ, "PATH": path_with_this_python()}).returncode
    if code == 0:
        print("plan: params.yaml now holds the experiment's values; `git checkout params.yaml` returns to the default")
    return code


if __name__ == "__main__":
    sys.exit(main())
