import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.fakedata import make_emnist_dir

# fixtures shared by test modules (training: prepared, empty_store, store, root, baseline; evaluate and report:
# trained, workspace; lineage: isolated_store; the codec: codec_project, codec_root; keep_root_run: root_twins,
# root_record); a module may define its own
pytest_plugins = [
    "tests.train_support",
    "tests.evaluate_support",
    "tests.lineage_support",
    "tests.codec_support",
    "tests.root_run_support",
]


@pytest.fixture
def emnist_dir(tmp_path: Path) -> Path:
    """A small EMNIST-like directory of gzip IDX files with SHA256SUMS and mapping.txt."""
    return make_emnist_dir(tmp_path / "emnist")


@pytest.fixture(scope="module")
def one_thread():
    """For a module of tests on small tensors on a busy machine: one intra-op thread is faster than contending for
    two (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


REPO = Path(__file__).resolve().parents[1]
TINY_SPEC = {
    "encoder_filters": [4, 8],
    "encoder_strides": [2, 2],
    "latent_dim": 8,
    "decoder_filters": [8, 4],
    "decoder_strides": [2, 2],
    "latent_activation": "linear",
}


@pytest.fixture
def project_root(tmp_path: Path, monkeypatch) -> Path:
    """An empty project directory: COMPRESSNET_ROOT points every stage's paths (pipeline.paths) at it."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("COMPRESSNET_ROOT", str(root))
    return root


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch) -> str:
    """A throw-away sqlite tracking store; nothing reaches the repo's mlflow.db."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow.tracking.fluent

    # the experiment an earlier test in this process made active (set_experiment keeps it in MLflow and exports
    # MLFLOW_EXPERIMENT_ID) lives in another store: start from none, and leave none behind
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # recorded, so that teardown unsets what this test exports
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    return uri


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> str:
    """Run a command that must succeed; on failure the assertion shows its output."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def committed_results(repo: Path) -> set[str]:
    """dvc.lock and the outputs it names: the root run's results, committed at the repo root."""
    lock = repo / "dvc.lock"
    stages = yaml.safe_load(lock.read_text())["stages"] if lock.is_file() else {}
    return {"dvc.lock", *(out["path"] for entry in stages.values() for out in entry.get("outs", []))}


def make_project(
    root: Path, variants: dict, epochs: int = 2, data_source: str | None = None, seeds: tuple[int, ...] = (0,)
) -> tuple[Path, dict]:
    """Copy the repo's tracked (and new, unignored) files into a fresh git repo with these variants, without the root
    run's results (a project that has run nothing yet).

    Returns the root and an environment whose PATH starts with this venv, with no MLFLOW_TRACKING_URI,
    so stages use the copy's own sqlite store, as a user's checkout would.
    """
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    results = committed_results(REPO)
    for name in files:
        if (REPO / name).is_file() and not any(name == out or name.startswith(f"{out}/") for out in results):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(epochs=epochs, batch_size=64, threads=1, steps_per_epoch=None)  # tests share 2 cores
    params["seeds"] = list(seeds)
    params["mlflow"]["log_model"] = False
    params["variants"] = variants
    params["matrix"] = list(variants)
    params["study"]["models"] = []  # the study's weights need its architectures and a download (tests/test_study.py)
    if data_source:
        params["data"]["source"] = data_source
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, root, env)
    return root, env


ARTIFACT_COLUMNS = {
    "experiments": "artifact_location",
    "runs": "artifact_uri",
    "logged_models": "artifact_location",
    "model_versions": "storage_location",
}


def repoint_artifacts(db: Path, old: Path, new: Path) -> None:
    """A copied MLflow sqlite store still names its original's artifact directories: point them at the copy's, so
    that a test's artifacts land in its own copy, never in a tree that other tests read."""
    with sqlite3.connect(db) as store:
        tables = {row[0] for row in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in ARTIFACT_COLUMNS.items():
            if table in tables:
                store.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (str(old), str(new)))
