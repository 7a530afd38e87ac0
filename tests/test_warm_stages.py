"""A `python -m` stage command under the executor runs in a child of a forkserver that has torch and MLflow imported:
as a fresh interpreter would run it (its checkout's code, its arguments, environment and directory, its exit code,
its exit handlers), its output in its log as it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tools import ray_tasks, warm_stages
from tests.conftest import REPO

# a stand-in checkout: its own `pipeline` package, whose probe says where it runs and what it was given
PROBE = """import atexit, ctypes, multiprocessing, os, sys
from pathlib import Path
import pipeline

def main():
    print("checkout", pipeline.MARK, "cwd", os.getcwd() == os.environ["EXPECTED_CWD"], "argv", sys.argv[1:])
    logged = "checkout" in Path(sys.argv[1]).read_text()
    print("first on sys.path", sys.path[0] == os.getcwd(), "logged already", logged)
    print("title", Path("/proc/self/cmdline").read_bytes().replace(b"\\0", b" ").decode().split(" -m ")[-1].strip())
    print("import path", sys.path[1:])
    death_signal = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(death_signal))  # PR_GET_PDEATHSIG
    # multiprocessing imports a parent's main module again as __mp_main__ unless told not to: here it never is
    again = getattr(sys.modules.get("__mp_main__"), "__name__", "__main__") == "__mp_main__"
    unset = multiprocessing.get_start_method(allow_none=True) is None  # the platform's default, not forkserver
    fresh = not again and unset and "ONLY_IN_THE_PARENT" not in os.environ
    print("as a fresh one", fresh, sys.argv[0].endswith("probe.py"), "dies with its parent", death_signal.value)
    atexit.register(lambda: Path("exit-handler-ran").touch())
    code = sys.argv[2]
    if code in ("raise", "interrupt"):
        raise ValueError("the stage failed") if code == "raise" else KeyboardInterrupt
    sys.exit("probe: error: no data" if code == "message" else int(code))

if __name__ == "__main__":
    main()
"""


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> tuple[Path, dict]:
    # the probe needs none of torch and MLflow: a forkserver without them starts in a fraction of a second (the slow
    # suite's executor tests run the stages on the real preload)
    monkeypatch.setattr(warm_stages, "PRELOAD", ["json"])
    # the forkserver (one per process) takes the environment of the test that starts it: its streams buffered, as
    # the Ray worker's are, and a variable no stage is given
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    monkeypatch.setenv("ONLY_IN_THE_PARENT", "1")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("MARK = 'the stand-in'\n")
    (tmp_path / "pipeline" / "probe.py").write_text(PROBE)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    del env["ONLY_IN_THE_PARENT"]
    return tmp_path, {**env, "EXPECTED_CWD": str(tmp_path), warm_stages.FRESH_ENV: "0"}


def run_probe(root: Path, env: dict, code: str) -> tuple[int, str]:
    log = ray_tasks.stage_log(root, "probe")
    return ray_tasks.run_process(f"python -m pipeline.probe {log} {code}", root, env, log)


def test_a_module_command_of_this_environment_s_python_is_forked_and_others_are_not(checkout):
    _, env = checkout
    assert warm_stages.python_module("python -m pipeline.stages.train model01 --seed 0", env) == (
        "pipeline.stages.train",
        ["model01", "--seed", "0"],
    )
    assert warm_stages.python_module("python child.py", env) is None
    assert warm_stages.python_module("echo -m pipeline.stages.train", env) is None
    other = {**env, "PATH": "/usr/bin"}  # a python of another environment, or none
    assert warm_stages.python_module(f"{Path(sys.executable).name} -m pipeline.stages.train", other) is None


def test_a_stage_starts_fresh_when_asked_or_where_an_nvidia_gpu_is(checkout, monkeypatch, tmp_path):
    _, env = checkout
    assert warm_stages.python_module("python -m pipeline.stages.train", {**env, warm_stages.FRESH_ENV: "1"}) is None
    (tmp_path / "nvidiactl").touch()
    monkeypatch.setattr(warm_stages, "NVIDIA_DRIVER", str(tmp_path / "nvidiactl"))
    assert warm_stages.python_module("python -m pipeline.stages.train", env) is None


def test_the_forked_stage_runs_its_checkout_s_code_with_its_arguments_directory_and_title(checkout):
    root, env = checkout
    code, output = run_probe(root, env, "0")
    assert code == 0, output
    log = ray_tasks.stage_log(root, "probe")
    lines = output.splitlines()
    assert lines[:3] == [
        f"checkout the stand-in cwd True argv ['{log}', '0']",
        "first on sys.path True logged already True",
        f"title pipeline.probe {log} 0",
    ]
    assert lines[4] == "as a fresh one True True dies with its parent 9"
    assert (root / "exit-handler-ran").exists()


@pytest.mark.parametrize("code, expected", [("3", 3), ("message", 1), ("raise", 1), ("interrupt", -2)])
def test_a_failing_stage_s_exit_code_and_message_come_back_and_its_exit_handlers_run(checkout, code, expected):
    root, env = checkout
    returned, output = run_probe(root, env, code)
    assert returned == expected
    if code in ("raise", "interrupt"):
        assert output.rstrip().endswith("ValueError: the stage failed" if code == "raise" else "KeyboardInterrupt")
    elif code == "message":
        assert output.endswith("probe: error: no data\n")
    assert (root / "exit-handler-ran").exists()


def test_a_fresh_interpreter_runs_it_alike_when_asked(checkout):
    root, env = checkout
    warm = run_probe(root, env, "0")
    fresh = run_probe(root, {**env, warm_stages.FRESH_ENV: "1"}, "0")
    assert fresh[0] == warm[0] == 0
    assert fresh[1].replace("parent 0", "parent 9") == warm[1]  # the death signal: setpriv's, if it is installed


def test_a_stage_whose_start_up_settings_differ_from_the_forkservers_starts_fresh(checkout):
    _, env = checkout
    assert warm_stages.python_module("python -m pipeline.probe", env)
    for setting in ({"PYTHONHASHSEED": "7"}, {"PYTHONPATH": "elsewhere"}, {"TORCH_LOGS": "dynamo"}):
        assert warm_stages.python_module("python -m pipeline.probe", {**env, **setting}) is None, setting


def test_a_forked_stage_is_stopped_as_a_process_is(checkout):
    root, env = checkout
    (root / "pipeline" / "waits.py").write_text("import signal\nsignal.pause()\n")
    stage = warm_stages.start("pipeline.waits", [], root, env, root / "waits.log")
    with pytest.raises(subprocess.TimeoutExpired):
        stage.wait(timeout=0.1)
    assert stage.returncode is None
    stage.terminate()
    assert stage.wait() == -15 == stage.returncode


def test_a_library_that_fails_to_preload_is_named_and_the_rest_still_load(tmp_path, monkeypatch, capsys):
    (tmp_path / "preload_missing_dependency.py").write_text("import no_such_module_anywhere\n")
    (tmp_path / "preload_broken.py").write_text("raise RuntimeError('broken at import')\n")
    (tmp_path / "preload_fine.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ["preload_missing_dependency", "preload_broken", "preload_fine"]
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    warm_stages.preload(names)
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 2
    assert "preload_missing_dependency" in said[0] and "no_such_module_anywhere" in said[0]
    assert "preload_broken" in said[1] and "broken at import" in said[1]
    assert sys.modules["preload_fine"].LOADED


def test_the_forkserver_builds_mlflow_s_map_of_installed_distributions_for_its_stages_to_inherit(monkeypatch, capsys):
    # the forkserver's set-up, its heavy libraries left out (seconds of imports this test does not need)
    script = (
        "from pipeline.tools import warm_stages; warm_stages.HEAVY_LIBRARIES.clear(); "
        "import pipeline.tools.forkserver_setup; from mlflow.utils import requirements_utils as r; "
        "print(r._MODULES_TO_PACKAGES['torch'])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert (done.returncode, done.stdout, done.stderr) == (0, "['torch']\n", "")
    from mlflow.utils import requirements_utils

    monkeypatch.delattr(requirements_utils, "_init_modules_to_packages_map")
    warm_stages.warm_mlflow_requirements()
    assert "MLflow's requirements map not built ahead" in capsys.readouterr().err
