"""The Ray tasks that run a DVC stage's command: in the executor's own checkout (one machine, or a shared
filesystem), or in the checkout of whichever node the task lands on, its inputs and outputs moved through a DVC
remote.

A node joins a cluster with the checkout its tasks use: a clone of the same commit, with the DVC remote configured.

    COMPRESSNET_CHECKOUT=/srv/compressnet RAY_AUTH_MODE=token ray start --address HEAD:6379
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ray
from dvc.dependency.param import ParamsDependency
from dvc.exceptions import DvcException
from dvc.repo import Repo
from dvc.utils.serialize import load_yaml
from filelock import FileLock

from pipeline import provenance
from pipeline.lib import io
from pipeline.tools import warm_stages
from pipeline.tools.child_path import path_with_this_python

CHECKOUT_ENV = "COMPRESSNET_CHECKOUT"
PIPELINE_FILES = ("dvc.yaml", "params.yaml", "dvc.lock")  # what a node's checkout takes from the executor's
LOG_DIR = "logs"  # each stage's output, as it runs, in the checkout that runs it
OUTPUT_TAIL = 4000  # bytes of a stage's output that come back with its result


@ray.remote(max_retries=0)  # a killed stage is retried by the executor, once its MLflow run is marked KILLED
def run_command(name: str, cmd: str, cwd: str, env: dict) -> tuple[int, str]:
    """A stage's command in the executor's checkout, on the GPUs Ray gave this task (its CUDA_VISIBLE_DEVICES)."""
    gpus = {key: os.environ[key] for key in ("CUDA_VISIBLE_DEVICES",) if key in os.environ}
    log = stage_log(Path(cwd), name)
    code, output = run_process(cmd, Path(cwd), {**env, **gpus}, log)
    return code, output if code == 0 else f"{output}\nall of it in {log}"


@ray.remote(max_retries=0)
def run_on_node(name: str, cmd: str, inputs: list[str], files: dict, sources: dict, remote: str, env: dict) -> tuple:
    """The stage run in this node's checkout: the executor's pipeline files (and the uncached outputs of the stages
    it reads) written there, its source files checked against the executor's (`sources`: source_digests there), the
    cached outputs of those stages pulled from the DVC remote, its command run, the stage committed and pushed.
    Returns the exit code, the end of the output, and, if it succeeded, the stage's dvc.lock entry and its uncached
    outputs."""
    node = platform.node()
    root = Path(os.environ.get(CHECKOUT_ENV) or "/nonexistent")
    if not (root / "dvc.yaml").is_file():
        hint = f"start the Ray node with {CHECKOUT_ENV} set to a checkout of this project (docs/scale-out.md)"
        return 2, f"node {node}: {CHECKOUT_ENV}={os.environ.get(CHECKOUT_ENV)!r} is not a checkout; {hint}", {}
    step = "reading its DVC project"  # what failed, if DVC raises
    try:
        with checkout_lock(root):
            write_files(root, files)
            repo = Repo(str(root))
            here = source_digests(repo, name)
            differing = sorted(path for path, digest in sources.items() if here.get(path) != digest)
            if differing:
                hint = "check out the executor's commit there (docs/scale-out.md)"
                return 2, f"node {node}: its checkout differs from the executor's in {', '.join(differing)}; {hint}", {}
            if inputs:
                step = f"pulling {', '.join(inputs)} from DVC remote {remote!r}"
                repo.pull(targets=inputs, remote=remote, force=True)
            step = f"removing {name}'s outputs before it runs"
            with repo.lock:
                stage_of(repo, name).remove_outs(ignore_remove=False)  # as dvc repro
    except DvcException as err:
        return 1, f"node {node}: {step} failed: {err}", {}
    code, output = run_process(
        cmd, root, {**os.environ, **env, "DVC_ROOT": str(root), "PATH": path_with_this_python()}, stage_log(root, name)
    )
    if code != 0:
        return code, f"{output}\nnode {node}: all of it in {stage_log(root, name)}", {}
    try:
        with checkout_lock(root):
            repo = Repo(str(root))
            with provenance.lock_guard(root):  # another task's stage may be reading this checkout's dvc.lock
                repo.commit(name, force=True)
                entry = load_yaml(root / "dvc.lock")["stages"][name]
            repo.push(targets=[name], remote=remote)
            return 0, output, entry, uncached_outputs(repo, [name])
    except DvcException as err:
        return 1, f"{output}\nnode {node}: committing or pushing to DVC remote {remote!r} failed: {err}", {}


def stage_of(repo: Repo, name: str):
    """The stage of that name (matrix stages included: train@model01-0) in the repo's index."""
    return next(s for s in repo.index.stages if s.name == name)


def source_digests(repo: Repo, name: str) -> dict[str, str]:
    """DVC's hash of each file or directory the stage depends on that no stage writes (its code, pinned checksums, a
    data directory), by the path dvc.yaml gives it: what a node must share with the executor before it runs the
    stage. Its params are left out: the task has just written the executor's params.yaml."""
    written = {out.fs_path for stage in repo.index.stages for out in stage.outs}
    deps = [dep for dep in stage_of(repo, name).deps if dep.fs_path not in written and dep.exists]
    return {dep.def_path: dep.get_hash().value for dep in deps if not isinstance(dep, ParamsDependency)}


@contextlib.contextmanager
def checkout_lock(root: Path) -> Iterator[None]:
    """DVC's commands in the node's checkout, one task at a time (DVC's own lock gives up after 3 s); from inside it,
    as DVC resolves stage names and paths from the current directory."""
    (root / ".dvc" / "tmp").mkdir(exist_ok=True)
    with FileLock(root / ".dvc" / "tmp" / "compressnet-node.lock"), contextlib.chdir(root):
        yield


def pipeline_files(root: Path) -> dict[str, bytes | None]:
    """The executor's dvc.yaml, params.yaml and dvc.lock (None: no such file yet)."""
    return {name: (root / name).read_bytes() if (root / name).exists() else None for name in PIPELINE_FILES}


def uncached_outputs(repo: Repo, names: list[str]) -> dict[str, bytes | dict[str, bytes]]:
    """The outputs of these stages that DVC does not cache (`cache: false`: small reports kept in git), which a DVC
    remote therefore never holds: path -> bytes, or for a directory, path -> {file inside it -> bytes}. They travel
    with the task instead; DVC's check of the md5s in dvc.lock afterwards covers them too."""
    found: dict[str, bytes | dict[str, bytes]] = {}
    for stage in (s for s in repo.index.stages if s.name in names):
        for out in (o for o in stage.outs if not o.use_cache and Path(o.fs_path).exists()):
            path = Path(out.fs_path)
            key = str(path.relative_to(repo.root_dir))
            if path.is_dir():
                found[key] = {str(f.relative_to(path)): f.read_bytes() for f in path.rglob("*") if f.is_file()}
            else:
                found[key] = path.read_bytes()
    return found


def write_files(root: Path, files: dict[str, bytes | dict | None]) -> None:
    """Writes what pipeline_files or uncached_outputs returned into the checkout at root (a directory is replaced
    whole; None removes the file)."""
    for name, content in files.items():
        path = root / name
        if isinstance(content, dict):
            shutil.rmtree(path, ignore_errors=True)
            for inner, data in content.items():
                io.atomic_write(path / inner, lambda tmp, data=data: tmp.write_bytes(data))
        elif content is None:
            path.unlink(missing_ok=True)
        else:
            io.atomic_write(path, lambda tmp, data=content: tmp.write_bytes(data))


def stage_log(root: Path, name: str) -> Path:
    """Where a stage's output goes as it runs (the task returns only its end): logs/<stage>.log in the checkout."""
    return root / LOG_DIR / f"{name}.log"


def run_process(cmd: str, cwd: Path, env: dict, log: Path) -> tuple[int, str]:
    """A stage's command (a `python -m` one forked from a process that has its libraries imported: warm_stages.py),
    its output written to `log` as it runs (the previous run's kept as <stage>.log.1): its exit code and the end of
    that output. A cancelled task stops it before returning, and a killed worker takes it along."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.exists():
        log.replace(log.with_name(f"{log.name}.1"))
    env = {**env, "PYTHONUNBUFFERED": "1"}  # a file, unlike a terminal, gets Python's print()s only when it exits
    module = warm_stages.python_module(cmd, env)
    with log.open("w") as out:
        if module:
            proc = warm_stages.start(*module, cwd, env, log)
        else:
            proc = subprocess.Popen(dies_with_parent(shlex.split(cmd)), cwd=cwd, env=env, stdout=out, stderr=out)
        try:
            wait_interruptibly(proc)
        except BaseException:  # ray.cancel raises KeyboardInterrupt here
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    with log.open("rb") as written:
        written.seek(max(0, log.stat().st_size - OUTPUT_TAIL))
        tail = written.read().lstrip(bytes(range(0x80, 0xC0)))  # not from the middle of a UTF-8 character
    return proc.returncode, tail.decode(errors="replace")


def wait_interruptibly(proc: subprocess.Popen) -> None:
    """Waits a second at a time: ray.cancel's KeyboardInterrupt reaches a thread only between Python bytecodes, never
    inside one blocking wait."""
    while True:
        try:
            proc.wait(timeout=1.0)
            return
        except subprocess.TimeoutExpired:
            continue


def dies_with_parent(argv: list[str]) -> list[str]:
    """argv run so that the kernel SIGKILLs it when the Ray worker that started it dies: a stage must never go on
    writing while its retry runs (util-linux's setpriv; without it, as it is)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv and sys.platform == "linux" else argv
