"""Stage commands of the form `python -m <module> ...` run in a process forked from one that has already imported
torch, MLflow and the other heavy libraries every stage imports (multiprocessing's forkserver, one per Ray worker),
so that a stage under the executor does not spend seconds on imports before its work.

Only third-party libraries are preloaded: the stage's own code is imported afresh in each child, from the checkout
it runs in. The child takes the task's environment, working directory and arguments before the stage's code runs,
and goes through the exit handlers a fresh interpreter would (MLflow ends its runs in them). What the libraries read
from the environment as they are imported comes from the Ray worker's (the executor's, plus Ray's OMP_NUM_THREADS):
the stages set their thread count themselves (device.configure_compute).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import multiprocessing
import os
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import setproctitle

# what the stages import (found by diffing sys.modules around each stage): torch, torch.export's compiler stack and
# MLflow's SQL store make most of a stage's start-up; of this project's code only the forkserver's own set-up (a
# child imports its stage's code afresh)
PRELOAD = [
    "pipeline.tools.forkserver_dies_with_worker",
    *("torch", "torch._dynamo", "torch.export", "networkx", "sympy"),
    *("mlflow", "mlflow.pytorch", "mlflow.pyfunc", "mlflow.store.tracking.sqlalchemy_store", "alembic.command", "git"),
    *("pandas", "scipy.stats", "skimage.metrics", "matplotlib.pyplot", "PIL.Image", "filelock"),
]
PR_SET_PDEATHSIG = 1  # linux/prctl.h
FRESH_ENV = "COMPRESSNET_FRESH_PROCESSES"  # "1": every stage in a fresh interpreter, none forked
NVIDIA_DRIVER = "/dev/nvidiactl"


def python_module(cmd: str, env: dict) -> tuple[str, list[str]] | None:
    """(module, arguments) if the command runs a module with this interpreter (the `python` its PATH finds is in the
    same environment's bin directory), else None: a command the forked process cannot stand in for, or one that
    starts fresh because the environment says so (FRESH_ENV) or the machine has an NVIDIA GPU (CUDA cannot be used
    in a child forked from a process that may have initialised it, and no GPU has run this path yet)."""
    argv = shlex.split(cmd)
    fresh = env.get(FRESH_ENV) == "1" or sys.platform != "linux" or Path(NVIDIA_DRIVER).exists()
    if fresh or len(argv) < 3 or argv[1] != "-m":
        return None
    found = shutil.which(argv[0], path=env.get("PATH"))
    same_environment = found and Path(os.path.abspath(found)).parent == Path(os.path.abspath(sys.executable)).parent
    return (argv[2], argv[3:]) if same_environment else None


class ForkedStage:
    """A started child, waited on and stopped as a subprocess.Popen is (what ray_tasks.run_process expects)."""

    def __init__(self, process: multiprocessing.Process):
        self.process = process

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode  # -N when signal N ended it, as Popen's

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.process.name, timeout)
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


def start(module: str, args: list[str], cwd: Path, env: dict, log: Path) -> ForkedStage:
    """The module run as `python -m module args` would run it, in a child of the forkserver, its output to `log`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    path = [str(cwd), *fresh_sys_path(env)]
    process = context.Process(target=run_module, args=(module, args, path, env, str(log)), name=module)
    with main_module_hidden():
        process.start()
    return ForkedStage(process)


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """multiprocessing has each child import the parent's __main__ again (for targets defined there): here the Ray
    worker's script or the executor, seconds of imports the stage does not need. The target lives in this module."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def fresh_sys_path(env: dict) -> list[str]:
    """The import path a fresh interpreter has in this environment (its PYTHONPATH included), past the entry for the
    working directory: the forkserver has the Ray worker's, with Ray's own vendored packages first."""
    script = "import json, sys; print(json.dumps(sys.path[1:]))"
    return json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True).stdout)


def run_module(module: str, args: list[str], path: list[str], env: dict, log: str) -> None:
    """In the child: the task's directory (path[0]), import path, environment and output, then the module as
    __main__."""
    cwd = path[0]
    die_with_parent()
    # ps and /proc show the stage's command, not the forkserver's (first: it needs the environment as it was)
    setproctitle.setproctitle(shlex.join([sys.executable, "-m", module, *args]))
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = path
    for name in [name for name in sys.modules if name == "pipeline" or name.startswith("pipeline.")]:
        del sys.modules[name]  # this module's own package may come from another checkout: the stage's is cwd's
    with open(log, "ab", buffering=0) as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=True)  # a file gets the lines as they are printed
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()  # multiprocessing ends its children with os._exit, past these


def die_with_parent() -> None:
    """The kernel SIGKILLs this process when its parent dies: a stage when its forkserver does, the forkserver when
    its Ray worker does."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
