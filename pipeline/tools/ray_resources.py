"""The executor's options checked before and as Ray starts: numbers Ray would refuse, requests no node of the
cluster can ever meet (the executor would wait for ever), and what --remote needs."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from urllib.parse import urlparse

from dvc.exceptions import DvcException
from dvc.repo import Repo

from pipeline import tracking


def check_options(parser: argparse.ArgumentParser, args) -> None:
    """Numbers Ray would accept and then never schedule (0 CPUs) or divide by, refused before it starts."""
    if args.jobs < 1:
        parser.error(f"--jobs: at least 1 stage at once, got {args.jobs}")
    if args.cpus_per_run <= 0:
        parser.error(f"--cpus-per-run: more than 0, got {args.cpus_per_run}")
    if args.gpus_per_run < 0 or (args.gpus_per_run > 1 and not args.gpus_per_run.is_integer()):
        parser.error(f"--gpus-per-run: a fraction of one GPU or a whole number of GPUs, got {args.gpus_per_run}")


def local_cpus(args) -> int:
    """The CPUs a local Ray is started with: whole ones, as Ray takes them (--jobs 1 --cpus-per-run 0.5: 1)."""
    return math.ceil(args.jobs * args.cpus_per_run)


def slots(args, cluster_cpus: float) -> int:
    """Stages at once: as many as the cluster's CPUs hold, and on a local Ray no more than --jobs."""
    fit = max(1, int(cluster_cpus // args.cpus_per_run))
    return fit if args.address else min(fit, args.jobs)


def unschedulable(args, nodes: list[dict]) -> str | None:
    """Why no alive node (ray.nodes()) could run a stage with these options, or None."""
    alive = [node["Resources"] for node in nodes if node.get("Alive")]
    cpus = max((resources.get("CPU", 0) for resources in alive), default=0)
    if cpus < args.cpus_per_run:
        return f"--cpus-per-run {args.cpus_per_run:g}: no node of the Ray cluster has that many CPUs (at most {cpus:g})"
    gpus = max((r.get("GPU", 0) for r in alive if r.get("CPU", 0) >= args.cpus_per_run), default=0)
    if gpus < args.gpus_per_run:
        return (
            f"--gpus-per-run {args.gpus_per_run:g}: no node of the Ray cluster has that much GPU (at most {gpus:g}); "
            "leave the option out where there is no GPU"
        )
    return None


def check_remote_setup(parser: argparse.ArgumentParser, args, root: Path) -> None:
    """--remote needs a cluster, a tracking store every node reaches, and this checkout's outputs on the remote (of
    the targets' stages, when targets are given)."""
    if not args.address:
        parser.error("--remote runs stages on the nodes of a Ray cluster: give its --address")
    if urlparse(tracking.tracking_uri(root)).scheme in ("", "file", "sqlite"):
        parser.error(
            "--remote: stages on other machines cannot log into this machine's local MLflow store; start a tracking "
            "server every node reaches (make tracking-server) and export MLFLOW_TRACKING_URI (docs/scale-out.md)"
        )
    try:
        # the outputs of stages already up to date, for the nodes to pull
        Repo(str(root)).push(targets=args.targets or None, with_deps=True, remote=args.remote)
    except DvcException as err:
        parser.error(f"--remote {args.remote}: pushing this checkout's outputs failed: {err}")
