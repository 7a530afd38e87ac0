"""Run this DVC pipeline's out-of-date stages in parallel on Ray, with dvc.lock written as `dvc repro` writes it.

    python -m pipeline.tools.parallel --jobs 4                 # a local Ray on this machine's cores and GPUs
    python -m pipeline.tools.parallel --address ray://head:10001 --gpus-per-run 0.25
    python -m pipeline.tools.parallel --address head:6379 --remote shared   # each node in its own checkout
    python -m pipeline.tools.parallel --jobs 1 evaluate@model01-0 evaluate@model02-0   # these, run by run

DVC stays the record: a stage is dispatched once every stage it depends on has finished, only if DVC says it is
changed (checked then, as `dvc repro` checks it), its command runs as a Ray task in this checkout, and this process
commits it (`dvc commit`: dvc.lock entry, outputs cached) one at a time. A following `dvc repro` runs nothing.
The tasks share this checkout's files, so every node must see it (one machine, or a shared filesystem); with
--remote each node works in its own checkout instead and the data moves through a DVC remote (ray_tasks.py).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path

import ray
from dvc.exceptions import DvcException
from dvc.lock import LockError
from dvc.repo import Repo
from mlflow.tracking import MlflowClient
from ray.exceptions import NodeDiedError, OutOfMemoryError, RayTaskError, WorkerCrashedError
from tqdm import tqdm

from pipeline import paths, provenance, tracking
from pipeline.cli import one_line
from pipeline.tools import lock_entries, ray_resources, ray_tasks, repo_lock, stage_graph
from pipeline.tools.child_path import path_with_this_python
from pipeline.tools.stage_clock import StageClock, describe, kind
from pipeline.tools.stop_signal import Stopped, StopSignal

GPU_STAGES = ("train", "evaluate", "classifier", "study")  # the stages that put a model on the device


class StageFailed(RuntimeError):
    """A stage's command failed; the message names it and ends with its output."""


def command_if_changed(root: Path, name: str, clear_outputs: bool) -> str | None:
    """The stage's command if DVC finds it changed, else None. With clear_outputs its outputs are removed first, as
    `dvc repro` removes them (a file left in an output directory would otherwise be committed with it)."""
    repo = Repo(str(root))  # a fresh index: dvc.lock has the stages committed since
    stage = ray_tasks.stage_of(repo, name)
    with repo.lock:
        if not stage.changed():
            return None
        if clear_outputs:
            stage.remove_outs(ignore_remove=False, force=False)
        return stage.cmd


def resources(name: str, args) -> dict:
    gpus = args.gpus_per_run if kind(name) in GPU_STAGES else 0
    return {"num_cpus": args.cpus_per_run, "num_gpus": gpus}


def mark_killed(experiment_id: str, executor_id: str, name: str) -> str:
    """This executor's runs of the stage left RUNNING by a process that could not end them (SIGKILL) marked KILLED
    (another user's live runs of the same stage on a shared server are left alone). Says how many, or why none."""
    client = MlflowClient()
    query = f"tags.stage = '{name}' and tags.executor = '{executor_id}' and attributes.status = 'RUNNING'"
    try:
        runs = client.search_runs([experiment_id], filter_string=query)
        for run in runs:
            client.set_terminated(run.info.run_id, "KILLED")
    except tracking.STORE_ERRORS as err:  # the store may be the fault: report it, never hide the stage's error
        return f"its MLflow runs could not be marked KILLED ({one_line(err)})"
    return f"{len(runs)} MLflow run(s) marked KILLED"


class Executor:
    def __init__(self, root: Path, args, experiment_id: str, stop: StopSignal, upstream: dict[str, set[str]]):
        self.root, self.args, self.experiment_id, self.stop = root, args, experiment_id, stop
        self.upstream = upstream  # the stages to bring up to date, in the order they are dispatched in
        self.done: set[str] = set()  # finished or found up to date; `ran` counts those that ran
        self.retried: set[str] = set()
        self.ran = 0
        self.running: dict = {}  # ray ObjectRef -> stage name
        self.clock = StageClock()
        self.slots = ray_resources.slots(args, ray.cluster_resources().get("CPU", 1))
        self.executor_id = uuid.uuid4().hex  # tags this executor's runs (tracking.run_tags)
        self.env = {**os.environ, "DVC_ROOT": str(root), "PATH": path_with_this_python()}
        self.env[tracking.EXECUTOR_ENV] = self.executor_id
        self.node_env = {  # what a task on another node takes from here; the rest is that node's own
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(root),
            "MLFLOW_EXPERIMENT_NAME": tracking.experiment_name(),
            tracking.EXECUTOR_ENV: self.executor_id,
        }

    def waiting(self) -> list[str]:
        started = set(self.running.values())
        return [n for n in self.upstream if n not in self.done and n not in started]

    def ready(self) -> list[str]:
        return [n for n in self.waiting() if self.upstream[n] <= self.done]

    def dispatch(self, progress: tqdm) -> None:
        """Starts ready stages while Ray has room for them (skipping those DVC finds unchanged), first in the order
        of `stage_graph.needed_for`: a stage found up to date makes the stages after it ready at once, so a resumed
        run keeps the order (the study stages before training)."""
        while len(self.running) < self.slots and (ready := self.ready()):
            name = ready[0]
            self.stop.check()
            cmd = self.command_if_changed(name)
            if cmd is None:  # not counted by the bar, whose rate and time left are the stages that run
                self.done.add(name)
                progress.total -= 1
                continue
            self.running[self.submit(name, cmd)] = name

    def command_if_changed(self, name: str) -> str | None:
        clear = not self.args.remote
        try:
            return repo_lock.while_locked(lambda: command_if_changed(self.root, name, clear), name, self.stop)
        except DvcException as err:
            raise StageFailed(f"stage {name}: DVC could not say whether it changed: {one_line(err)}") from err

    def submit(self, name: str, cmd: str):
        options = {**resources(name, self.args), "name": name}
        self.clock.start(name)
        where = f"${ray_tasks.CHECKOUT_ENV} on its node" if self.args.remote else "here"
        tqdm.write(f"parallel: {name} dispatched; its output: {ray_tasks.stage_log(Path(), name)} ({where})")
        if not self.args.remote:
            return ray_tasks.run_command.options(**options).remote(name, cmd, str(self.root), self.env)
        inputs = sorted(self.upstream[name])
        with Repo(str(self.root)) as repo:
            files = {**ray_tasks.pipeline_files(self.root), **ray_tasks.uncached_outputs(repo, inputs)}
            sources = ray_tasks.source_digests(repo, name)
        return ray_tasks.run_on_node.options(**options).remote(
            name, cmd, inputs, files, sources, self.args.remote, self.node_env
        )

    def finish(self, ref, progress: tqdm) -> None:
        name = self.running.pop(ref)
        try:
            code, output, *returned = ray.get(ref)
        except (WorkerCrashedError, NodeDiedError, OutOfMemoryError) as err:  # the worker died, and the stage with it
            code, output = -signal.SIGKILL, str(err)
        except RayTaskError as err:  # the task itself raised (a full disk on a node, ...)
            cause = err.cause if isinstance(err.cause, BaseException) else err
            raise StageFailed(f"stage {name}: its Ray task failed: {type(cause).__name__}: {cause}") from err
        if code - 128 in (signal.SIGINT, signal.SIGTERM):  # a stage these stop exits 128 + their number (cli.py)
            code = 128 - code
        if code < 0:  # killed by a signal: the OOM killer, an operator, a lost node
            self.killed(name, -code, output)
            return
        if code != 0:
            raise StageFailed(f"stage {name} failed (exit {code}):\n{output}")
        in_place = not self.args.remote  # with --remote, adopt() puts the previous entry and outputs back
        try:
            repo_lock.while_locked(lambda: self.record(name, returned), f"{name} ran; recording it", self.stop)
        except Stopped:
            if in_place:
                tqdm.write(f"parallel: {name} ran but is not recorded; `dvc commit {name}` records it", file=sys.stderr)
            raise
        except (DvcException, lock_entries.CheckoutDiffers) as err:
            locked_here = in_place and isinstance(err, LockError)
            hint = f"; its outputs are in place: `dvc commit {name}` records it" if locked_here else ""
            raise StageFailed(f"stage {name} ran, but DVC could not record it here: {err}{hint}") from err
        self.done.add(name)
        self.clock.finish(name)
        self.ran += 1
        progress.update()

    def record(self, name: str, returned: list) -> None:
        """The stage committed as `dvc repro` commits it: dvc.lock entry, outputs cached."""
        if self.args.remote:
            lock_entries.adopt(self.root, name, *returned, self.args.remote)
        else:
            with provenance.lock_guard(self.root):
                Repo(str(self.root)).commit(name, force=True)

    def killed(self, name: str, signum: int, output: str) -> None:
        """Marks the stage's runs KILLED; it is dispatched again once (its outputs were never renamed into place
        half-written, and train resumes its checkpoint). Killed twice, the run stops."""
        marked = mark_killed(self.experiment_id, self.executor_id, name)
        self.clock.forget(name)
        what = f"stage {name} was killed (signal {signum}); {marked}"
        if name in self.retried:
            raise StageFailed(f"{what}, for the second time:\n{output}")
        self.retried.add(name)
        tqdm.write(f"parallel: {what}; retrying it once", file=sys.stderr)

    def run(self) -> None:
        bar = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"  # tqdm's rate and ETA: see stage_clock.py
        with tqdm(total=len(self.upstream), desc="stages", bar_format=bar) as progress:
            while len(self.done) < len(self.upstream):
                self.stop.check()
                self.dispatch(progress)
                waiting = self.waiting()
                left = describe(self.clock.seconds_left(waiting, self.slots))
                progress.set_postfix_str(f"running={len(self.running)}, waiting={len(waiting)}, {left}")
                if not self.running:
                    continue
                self.finish(self.next_finished(), progress)

    def next_finished(self):
        """The next stage to finish, waited for a second at a time so that a stop signal is acted on."""
        while True:
            finished, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
            if finished:  # committed before a stop is acted on
                return finished[0]
            self.stop.check()

    def cancel(self) -> None:
        """Stops every running stage (SIGTERM: a stage marks its own run KILLED) and waits for them to exit; a
        Ctrl-C or SIGTERM meanwhile ends the wait."""
        signals = len(self.stop.received)
        for ref in list(self.running):
            ray.cancel(ref)
        pending = list(self.running)
        while pending and len(self.stop.received) == signals:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        for name in self.running.values():
            mark_killed(self.experiment_id, self.executor_id, name)  # what could not mark itself
        self.running.clear()


def start_ray(args) -> None:
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:  # "local": a new Ray on this machine even when `ray start` has left a cluster running here
        cpus = ray_resources.local_cpus(args)
        ray.init(address="local", num_cpus=cpus, log_to_driver=False, include_dashboard=False)


def command_to_go_on(argv: list[str], root: Path) -> str:
    """This command as it ran, its interpreter, options and targets too (relative to the root where they lie in it,
    as .venv/bin/python does): after a stop, pasted at the root, it runs what is left."""
    python = Path(sys.executable)
    python = python.relative_to(root) if python.is_relative_to(root) else python
    return shlex.join([str(python), "-m", "pipeline.tools.parallel", *argv])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.parallel",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="stages at once on a local Ray")
    parser.add_argument("--address", help="an existing Ray cluster (default: start one on this machine)")
    parser.add_argument("--cpus-per-run", type=float, default=1, help="Ray CPUs each stage declares")
    parser.add_argument(
        "--gpus-per-run",
        type=float,
        default=0,
        help="GPU fraction of each stage that puts a model on the device (train, evaluate, classifier, study)",
    )
    parser.add_argument("--remote", help="run each stage in its node's own checkout, data through this DVC remote")
    parser.add_argument(
        "targets",
        nargs="*",
        help="stages to bring up to date with those they need, first the first's (default: all); `train`: all train@",
    )
    args = parser.parse_args(argv)
    ray_resources.check_options(parser, args)
    root = paths.root()
    os.chdir(root)  # DVC resolves stage names from the current directory
    every_stage = stage_graph.dependencies(Repo(str(root)))  # dvc.yaml's order, as dvc.lock lists them
    try:
        upstream = stage_graph.needed_for(every_stage, args.targets)
    except ValueError as err:
        parser.error(str(err))
    if args.remote:
        ray_resources.check_remote_setup(parser, args, root)
    experiment_id = tracking.setup(tracking.experiment_name())  # once, before the fan-out
    stop = StopSignal()
    start_ray(args)
    stop.install()  # again: ray.init's SIGTERM handler exits without stopping stages
    try:
        if why := ray_resources.unschedulable(args, ray.nodes()):
            print(f"parallel: error: {why}", file=sys.stderr)
            return 2
        executor, started = Executor(root, args, experiment_id, stop, upstream), time.perf_counter()
        executor.run()
    except StageFailed as err:
        executor.cancel()
        print(f"parallel: {err}", file=sys.stderr)
        return 1
    except Stopped as stopped:
        executor.cancel()
        rest = command_to_go_on(sys.argv[1:] if argv is None else argv, root)
        print(f"parallel: {stopped}; finished stages are committed, `{rest}` runs the rest", file=sys.stderr)
        return stopped.exit_code
    finally:
        ray.shutdown()
        stop.restore()
        lock_entries.order_lock(root, list(every_stage))  # commits came in the order stages finished
    summary = f"{len(executor.done)} stages up to date in {time.perf_counter() - started:.0f} s"
    print(f"parallel: {summary}, {executor.ran} of them run now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
