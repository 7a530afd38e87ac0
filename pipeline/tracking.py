"""Tracking, passed into the stages and the training loop: MLflow, or a no-op tracker with the same interface.

MlflowTracker.run() starts (or resumes) a run and never leaves it RUNNING: KILLED on Ctrl-C or SIGTERM, FAILED on
an error (a SIGKILL cannot be caught; train resumes such a run from its checkpoint). attach() logs into a finished
run without reopening it, so a later stage (evaluate, report) cannot change that run's status.
The store: MLFLOW_TRACKING_URI if set, else sqlite at the project root; the experiment: MLFLOW_EXPERIMENT_NAME if
set, else `compressnet`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import urllib.request
import warnings
from pathlib import Path

import mlflow
import sqlalchemy.exc
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from pipeline import paths
from pipeline.cli import Interrupted
from pipeline.lib.tracker import NoOpRun, NoOpTracker, Tracker  # noqa: F401  (the interface, re-exported)

DEFAULT_EXPERIMENT = "compressnet"
# MLflow 3's UI opens an experiment of this kind on its training runs, not on the GenAI overview (traces)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
EXECUTOR_ENV = "COMPRESSNET_EXECUTOR_ID"  # set by pipeline.tools.parallel: which executor started a stage's run


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used."""


# what a stage reports as one line: a store that is down, full or refuses a write (sqlite: "database or disk is full")
STORE_ERRORS = (TrackingError, mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError)


class MlflowRun:
    """One MLflow run, addressed by id: logging never depends on which run is active."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        now = get_current_time_millis()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def set_tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_figure(self, figure, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def log_table(self, table, name: str) -> None:
        self.client.log_table(self.run_id, table, name)

    def log_dict(self, content: dict, name: str) -> None:
        self.client.log_dict(self.run_id, content, name)

    def log_image(self, image, name: str) -> None:
        self.client.log_image(self.run_id, image, name)

    def log_artifact(self, path: Path, directory: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), directory)

    def tag_model_versions(self, tags: dict[str, str]) -> None:
        """Tag every registered model version this run logged."""
        for version in self.client.search_model_versions(f"run_id = '{self.run_id}'"):
            for key, value in tags.items():
                self.client.set_model_version_tag(version.name, version.version, key, value)

    def log_dataset(self, images, labels, name: str, source: str, digest: str, context: str) -> None:
        """A sample of a data set as the run's input (the active run: only inside MlflowTracker.run)."""
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice (schemes "" and "file"), so every local path warns that it
            # "can be interpreted in multiple ways", each of them LocalArtifactDatasetSource
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_numpy(images, targets=labels, name=name, source=source, digest=digest)
        try:
            mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException:
            # MLflow looks the data set up, then inserts it: two stages logging the same one at once (parallel
            # runs) can both miss it, and the later insert fails on the store's unique key. Logging an input is
            # idempotent, so the second try finds the row the other stage wrote; any other error fails again.
            mlflow.log_input(dataset, context=context)

    def log_model(self, model, registered_name: str, tags: dict[str, str]) -> None:
        """Log the model to the run and register it as a new version of `registered_name`, tagged with its lineage
        (the active run: only inside MlflowTracker.run)."""
        import torch
        from mlflow.models import infer_signature

        model = model.float().to("cpu", memory_format=torch.contiguous_format).eval()
        example = torch.rand(2, 1, 28, 28)
        with torch.no_grad():
            output = model(example).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example.numpy(), output),
            input_example=example.numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        mlflow.register_model(
            info.model_uri, registered_name, tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")}
        )


class MlflowTracker:
    """The project's MLflow store and experiment (created on first use)."""

    def __init__(self):
        self.experiment = experiment_name()
        self.experiment_id = setup(self.experiment)
        self.client = MlflowClient()

    @contextlib.contextmanager
    def run(self, name: str, tags: dict, resume_id: str | None = None):
        with tracked_run(run_id=resume_id, run_name=name, tags=_as_strings(tags)) as run:
            yield MlflowRun(self.client, run.info.run_id)

    def attach(self, run_id: str | None) -> MlflowRun | None:
        """A live run of this store to log into without reopening it; None if the store has no such run."""
        return MlflowRun(self.client, run_id) if self._live(run_id) is not None else None

    def resumable(self, run_id: str | None) -> bool:
        """Whether a checkpoint's run can go on: this store still has it, live, in this experiment."""
        run = self._live(run_id)
        return run is not None and run.info.experiment_id == self.experiment_id

    def new_finished_run(self, name: str, tags: dict) -> MlflowRun:
        """A run of its own for a stage whose training run is not in this store (marked finished at once)."""
        run = self.client.create_run(self.experiment_id, tags=_as_strings(tags), run_name=name)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return MlflowRun(self.client, run.info.run_id)

    def _live(self, run_id: str | None):
        try:
            run = self.client.get_run(run_id) if run_id else None
        except mlflow.exceptions.MlflowException:
            return None
        return run if run is not None and run.info.lifecycle_stage == "active" else None


def experiment_name() -> str:
    """MLflow's own setting, MLFLOW_EXPERIMENT_NAME, else the project's default."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def project_root(path: Path | None = None) -> Path:
    """The user's checkout, also when DVC runs us in a copy under <root>/.dvc/tmp/exps/ (exp --temp/--queue)."""
    parts = (path or paths.root()).parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path or paths.root()


def tracking_uri(root: Path | None = None) -> str:
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
    path = uri[len("sqlite:///") :].split("?", 1)[0]
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
            tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            experiment_id = client.create_experiment(experiment, artifact_location=location, tags=tags)
        except mlflow.exceptions.MlflowException:  # created concurrently by another stage
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id
    if found is not None and EXPERIMENT_KIND_TAG not in found.tags:  # made elsewhere, or by an older version
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _check_server(uri: str, timeout: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except OSError as err:
        raise TrackingError(
            f"MLflow tracking server {uri} is not reachable ({getattr(err, 'reason', err)}); "
            "start it or unset MLFLOW_TRACKING_URI to use the local sqlite store"
        ) from None


def git_state(root: Path | None = None) -> dict[str, str]:
    root = root or project_root()

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def _as_strings(tags: dict) -> dict[str, str]:
    """MLflow tags are strings: the sqlite store converts other values, a tracking server's REST client raises."""
    return {key: str(value) for key, value in tags.items()}


def run_tags(stage: str) -> dict[str, str]:
    tags = {"stage": stage, "mlflow.source.git.commit": "", **git_state()}
    tags["mlflow.source.git.commit"] = tags["git_commit"]
    names = (
        ("DVC_EXP_NAME", "dvc_exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev"),
        (EXECUTOR_ENV, "executor"),
    )
    for env, tag in names:
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@contextlib.contextmanager
def tracked_run(**start_run_kwargs):
    """mlflow.start_run that never leaves a run RUNNING: KILLED on Ctrl-C or SIGTERM, FAILED on an error."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if in_main else None
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


def interrupt(signum, frame):
    """A signal handler that stops the process as Ctrl-C does (SIGTERM: runs end KILLED, stages are cancelled)."""
    raise Interrupted(signum)
