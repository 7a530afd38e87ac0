"""Every shell command shown in README.md and docs/ works when copy-pasted after the two set-up commands.

Commands are the lines of ```bash blocks. All are checked statically (shell syntax, the module or make target they
name exists); the fast ones, those not marked `# slow`, also run in a tiny project after its pipeline ran, in a
shell set up as README says (`make install` and `source .venv/bin/activate`: the venv first on PATH).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess

import pytest

from tests.conftest import REPO, TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

SETUP = ("make install", "source .venv/bin/activate")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def commands() -> list[tuple[str, str]]:
    """(where, command) for every command line of every bash block."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            lines = [line.strip() for line in block.splitlines()]
            found += [(doc.name, line) for line in lines if line and not line.startswith("#")]
    return found


def is_slow(command: str) -> bool:
    return command.rstrip().endswith("# slow")


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


def test_the_docs_show_commands():
    assert len(commands()) >= 10
    assert {command.split("#")[0].strip() for _, command in commands()} >= set(SETUP)


@pytest.mark.parametrize("where, command", commands())
def test_command_is_well_formed(where, command):
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0, f"{where}: not valid shell: {command}"
    words = command.split("#")[0].split()
    if command.split("#")[0].strip() not in SETUP:
        assert ".venv/bin/" not in command, f"{where}: the venv is activated, no .venv/bin/ prefix: {command}"
    if words[:2] in (["python", "-m"],):
        assert importlib.util.find_spec(words[2]) is not None, f"{where}: no module {words[2]}"
    if words[0] == "make":
        targets = [w for w in words[1:] if "=" not in w]
        assert set(targets) <= make_targets(), f"{where}: no make target among {targets}"


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A copy of the repo whose one variant is called model01 (seed 0), after its whole pipeline ran."""
    root, env = make_project(tmp_path_factory.mktemp("project"), {"model01": TINY_SPEC})
    (root / ".venv").symlink_to(REPO / ".venv")  # `make` finds the installed venv, as after `make install`
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    run(["dvc", "exp", "run", "--set-param", f"data.source={data_dir}"], root, env)
    return root, env


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, command", [(w, c) for w, c in commands() if not is_slow(c) and c.split("#")[0].strip() not in SETUP]
)
def test_fast_command_runs(where, command, tiny_project):
    root, env = tiny_project
    result = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{where}: `{command}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


KINDS = ("history", "per_class")


@pytest.mark.slow
def test_dvc_plots_show_draws_each_runs_loss_curves_and_per_character_psnr(tiny_project):
    """`dvc plots show` exits 0 even when a plot fails to load: its JSON names the failures."""
    root, env = tiny_project
    shown = json.loads(run(["dvc", "plots", "show", "--json"], root, env))
    assert "errors" not in shown, shown.get("errors")
    assert set(shown["data"]) == {"reports/history/model01-seed0.csv", "reports/per_class/model01-seed0.csv"}
    history, per_class = (shown["data"][f"reports/{kind}/model01-seed0.csv"][0]["content"] for kind in KINDS)
    assert history["encoding"]["x"]["field"] == "epoch"
    assert history["encoding"]["strokeDash"]["scale"]["domain"] == ["train_loss", "val_loss"]  # a line for each
    assert per_class["encoding"]["x"]["field"] == "psnr" and per_class["encoding"]["y"]["field"] == "char"
