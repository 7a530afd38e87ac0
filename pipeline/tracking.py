"""MLflow plumbing shared by every stage: where the store is, which experiment, which tags a run carries."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import REPO_ROOT


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used."""


def project_root(path: Path = REPO_ROOT) -> Path:
    """The user's checkout, also when DVC runs us in a copy under <root>/.dvc/tmp/exps/ (exp --temp/--queue)."""
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path


def tracking_uri(root: Path = REPO_ROOT) -> str:
    """MLFLOW_TRACKING_URI if set, else the sqlite store at the root of the project `root` is (in)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root(root) / 'mlflow.db'}"


def store_missing(uri: str) -> bool:
    """A local sqlite store whose database file does not exist (opening it would create an empty one)."""
    database = _sqlite_file(uri)
    return database is not None and not database.exists()


def registered_model_name(experiment: str, variant: str) -> str:
    """The Model Registry entry of a variant, e.g. compressnet-model01: one version per training run."""
    return f"{experiment}-{variant}"


def artifact_location() -> str:
    """Artifact root of a local store: mlartifacts/ beside its sqlite file (the default store's is <root>/mlartifacts).

    Beside the database, so a store elsewhere (a test's tmp dir, another checkout) never writes into this repo.
    """
    database = _sqlite_file(tracking_uri())
    return ((database.parent if database else project_root()) / "mlartifacts").as_uri()


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative paths are relative to the working directory, as for SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path).resolve()


def setup(experiment: str) -> str:
    """Point MLflow at the project's store and experiment; returns the experiment id. Fails fast if unreachable."""
    uri = tracking_uri()
    remote = uri.startswith(("http://", "https://"))  # a server chooses its own artifact root
    if remote:
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        try:
            location = None if remote else artifact_location()
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created concurrently by another stage
            experiment_id = client.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _check_server(uri: str, timeout: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except OSError as err:
        raise TrackingError(f"MLflow tracking server {uri} is not reachable ({getattr(err, 'reason', err)}); "
                            "start it or unset MLFLOW_TRACKING_URI to use the local sqlite store") from None


def git_state(root: Path | None = None) -> dict[str, str]:
    root = root or project_root()

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def run_tags(stage: str) -> dict[str, str]:
    tags = {"stage": stage, "mlflow.source.git.commit": "", **git_state()}
    tags["mlflow.source.git.commit"] = tags["git_commit"]
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become strings so MLflow can log them as params."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value) if isinstance(value, (list, dict)) else value
    return flat


@contextlib.contextmanager
def tracked_run(**start_run_kwargs):
    """mlflow.start_run that never leaves a run RUNNING: KILLED on Ctrl-C or SIGTERM, FAILED on an error.

    (A SIGKILL cannot be caught; train resumes such a run from its checkpoint.)
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    run = mlflow.start_run(**start_run_kwargs)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def log_model(model: "torch.nn.Module", registered_name: str, tags: dict[str, str]) -> None:
    """Log the model to the run and register it as a new version of `registered_name`, tagged with its lineage."""
    import torch  # only the train stage logs models; the other stages need not import torch for tracking
    from mlflow.models import infer_signature

    model = model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    example = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        output = model(example).numpy()
    info = mlflow.pytorch.log_model(model, name="model", signature=infer_signature(example.numpy(), output),
                                    input_example=example.numpy(),
                                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    mlflow.register_model(info.model_uri, registered_name,
                          tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")})


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")
