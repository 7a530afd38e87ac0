"""Stage commands of the form `python -m <module> ...` run in a process forked from one that has already imported
torch, MLflow and the other heavy libraries every stage imports (multiprocessing's forkserver, one per Ray worker),
so that a stage under the executor does not spend seconds on imports before its work.

Only third-party libraries (and the forkserver's own set-up) are preloaded: the stage's code is imported afresh in
each child, from the checkout it runs in. The child takes the task's environment, import path, working directory
and arguments before the stage's code runs, and exits as a fresh interpreter does (its exit code, its threads, then
its exit handlers, in which MLflow ends its runs). What the libraries read from the environment as they are
imported comes from the Ray worker's (the executor's, plus Ray's OMP_NUM_THREADS): the stages set their thread count
themselves (device.configure_compute); a stage whose other start-up settings differ starts fresh. Unlike a fresh
interpreter's, the child's exit does not flush a file the stage left open (the stages write through io.atomic_write
and close what they open).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import json
import multiprocessing
import os
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import setproctitle

from pipeline.lib.lifetime import die_with_parent

# what the stages import (found by diffing sys.modules around each stage): torch, torch.export's compiler stack and
# MLflow's SQL store make most of a stage's start-up. None of this project's code: a child imports its stage's afresh
HEAVY_LIBRARIES = [
    *("torch", "torch._dynamo", "torch.export", "torch.export._trace", "torch.export.pt2_archive", "networkx", "sympy"),
    *("mlflow", "mlflow.pytorch", "mlflow.pyfunc", "mlflow.store.tracking.sqlalchemy_store", "alembic.command", "git"),
    *("opentelemetry.sdk.metrics", "sqlalchemy.dialects.sqlite"),  # what MLflow imports as a run starts
    *("pandas", "scipy.stats", "skimage.metrics", "matplotlib.pyplot", "PIL.Image", "filelock"),
]
PRELOAD = ["pipeline.tools.forkserver_setup"]  # which imports HEAVY_LIBRARIES (through preload, below)
FRESH_ENV = "COMPRESSNET_FRESH_PROCESSES"  # "1": every stage in a fresh interpreter, none forked
NVIDIA_DRIVER = "/dev/nvidiactl"
# variables read as an interpreter or a preloaded library starts (hash seed, warnings, site paths, torch's and the
# math libraries' settings): a forked stage has the forkserver's, so a stage whose own differ starts fresh. Not
# these: run_process sets the first for every stage, Ray the others in its workers (the stages set their thread
# count themselves: device.configure_compute)
STARTUP_PREFIXES = ("PYTHON", "TORCH", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "ONEDNN_", "DNNL_", "MPL")
STARTUP_IGNORED = {"PYTHONUNBUFFERED", "PYTHONBREAKPOINT", "OMP_NUM_THREADS"}
forkserver_settings: dict | None = None  # startup_settings of the environment this process's forkserver started in
forkserver_pid: int | None = None  # in a forkserver set up by forkserver_setup, and its children: its pid


def python_module(cmd: str, env: dict) -> tuple[str, list[str]] | None:
    """(module, arguments) if the command runs a module with this interpreter (the `python` its PATH finds is in the
    same environment's bin directory), else None: a command the forked process cannot stand in for, or one that
    starts fresh because the environment says so (FRESH_ENV), its start-up settings differ from the forkserver's, or
    the machine has an NVIDIA GPU (CUDA cannot be used in a child forked from a process that may have initialised
    it, and no GPU has run this path yet)."""
    argv = shlex.split(cmd)
    fresh = env.get(FRESH_ENV) == "1" or sys.platform != "linux" or Path(NVIDIA_DRIVER).exists()
    forkserver = startup_settings(os.environ) if forkserver_settings is None else forkserver_settings
    if fresh or startup_settings(env) != forkserver or len(argv) < 3 or argv[1] != "-m":
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
    global forkserver_settings
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    path = [str(Path(cwd).resolve()), *fresh_sys_path(tuple(sorted(startup_settings(env).items())))]
    process = context.Process(target=run_module, args=(module, args, path, env, str(log.resolve())), name=module)
    if forkserver_settings is None:  # the first start starts the forkserver, in this process's environment
        forkserver_settings = startup_settings(os.environ)
    with main_module_hidden():
        process.start()
    return ForkedStage(process)


def startup_settings(env: dict) -> dict:
    return {key: value for key, value in env.items() if key.startswith(STARTUP_PREFIXES) and key not in STARTUP_IGNORED}


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


@functools.cache
def fresh_sys_path(settings: tuple) -> list[str]:
    """The import path a fresh interpreter has with these start-up settings (its PYTHONPATH included), past the entry
    for the working directory: the forkserver has the Ray worker's, with Ray's own vendored packages first."""
    script = "import json, sys; print(json.dumps(sys.path[1:]))"
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ} | dict(settings)
    return json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True).stdout)


def run_module(module: str, args: list[str], path: list[str], env: dict, log: str) -> None:
    """In the child: the task's output, directory (path[0]), import path and environment, then the module as
    __main__, then the exit a fresh interpreter makes (never multiprocessing's: its exit code for an uncaught
    exception, and its order of exit handlers and threads, differ)."""
    with open(log, "ab", buffering=0) as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=True)  # a file gets the lines as they are printed
    os.setpgid(0, 0)  # out of the Ray worker's process group: a killed worker's stage dies by its SIGKILL (below),
    # as a fresh one does, before Ray's SIGTERM to the group would have it end its runs itself
    die_with_parent(forkserver_pid or os.getppid())
    # ps and /proc show the stage's command, not the forkserver's (before the environment changes: it needs it)
    setproctitle.setproctitle(shlex.join([sys.executable, "-m", module, *args]))
    os.chdir(path[0])
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = path
    for name in [name for name in sys.modules if name == "pipeline" or name.startswith("pipeline.")]:
        del sys.modules[name]  # this module's own package may come from another checkout: the stage's is cwd's
    multiprocessing.set_start_method(None, force=True)  # the stage's default is the platform's, not the forkserver
    sys.argv = [module, *args]
    os._exit(run_as_main(module))


def run_as_main(module: str) -> int:
    """The module run as __main__, then what a fresh interpreter does as it exits: the exit code, the traceback of an
    uncaught exception, its threads joined, then its exit handlers (MLflow ends its runs in them). Ctrl-C uncaught
    ends it by SIGINT, as it ends a fresh interpreter."""
    code, interrupted = 0, False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException as error:
        sys.excepthook(type(error), error, error.__traceback__)
        code, interrupted = 1, isinstance(error, KeyboardInterrupt)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def preload(names: list[str]) -> None:
    """Imports each module, saying on stderr which failed and why: a stage then imports it itself, seconds slower,
    and meets the same error where it needs the module."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # whatever the failure, the forkserver starts and its stages run
            print(f"warm stages: preloading {name} failed ({error!r}); each stage imports it itself", file=sys.stderr)


def warm_mlflow_requirements() -> None:
    """MLflow checks a logged model's pip requirements against the installed distributions, and maps every installed
    distribution to its modules to do it (about a second, on the first model a process logs), then keeps the map in
    the process. Built here once, every train stage forked from here inherits it. MLflow offers no public call for
    it: if its internals move, this says so and the stages build the map themselves, as fresh ones do."""
    try:
        from mlflow.utils import requirements_utils

        requirements_utils._init_modules_to_packages_map()
    except Exception as error:  # the stages run regardless, a second slower
        print(
            f"warm stages: MLflow's requirements map not built ahead ({error!r}); each stage builds it", file=sys.stderr
        )
