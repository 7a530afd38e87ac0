"""Where the pipeline's files live: the one module that knows. dvc.yaml names the same paths.

Every path hangs off the project root: this checkout (or the copy DVC runs an experiment in), or
COMPRESSNET_ROOT when set (tests and tools run stages against another directory that way).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_FILE = Path(__file__).with_name("reference.yaml")  # the study's published numbers, as data


def root() -> Path:
    return Path(os.environ.get("COMPRESSNET_ROOT") or REPO_ROOT)


def params_file() -> Path:
    return root() / "params.yaml"


def raw_dir() -> Path:
    return root() / "data" / "raw"


def prepared_dir() -> Path:
    return root() / "data" / "prepared"


def models_dir() -> Path:
    return root() / "models"


def checkpoint_dir() -> Path:
    return root() / "checkpoints"


def reports_dir() -> Path:
    return root() / "reports"


def model_file(run: str) -> Path:
    return models_dir() / f"{run}.pt"


def best_model_file(run: str) -> Path:
    return models_dir() / f"{run}.best.pt"


def checkpoint_file(run: str) -> Path:
    return checkpoint_dir() / f"{run}.ckpt"


def history_file(run: str) -> Path:
    return reports_dir() / "history" / f"{run}.csv"


def metrics_file(run: str) -> Path:
    return reports_dir() / "metrics" / f"{run}.json"


def per_class_file(run: str) -> Path:
    return reports_dir() / "per_class" / f"{run}.csv"


def samples_file(run: str) -> Path:
    return reports_dir() / "samples" / f"{run}.npy"


def classifier_file() -> Path:
    return models_dir() / "classifier.pt"


def classifier_result_file() -> Path:
    return reports_dir() / "classifier.json"


def baselines_file() -> Path:
    return reports_dir() / "baselines.json"


def figures_dir() -> Path:
    return reports_dir() / "figures"


def under(project: Path, path: Path) -> Path:
    """`path` (one of this module's) as it lies in the project at `project`; Path() gives it relative to the root."""
    return project / path.relative_to(root())


def study_raw_dir() -> Path:
    return raw_dir() / "study-weights"


def study_model_file(model: str) -> Path:
    return models_dir() / "study" / f"{model}.pt"


def study_metrics_file(model: str) -> Path:
    return reports_dir() / "study" / f"{model}.json"


def project_path(value: str) -> Path:
    """A path from params.yaml: absolute, or relative to the project root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root() / path).resolve()


def resolve_source(source: str) -> Path:
    """data.source as an absolute path (relative: to the root), as DVC reads it for prepare's dependency."""
    return project_path(source)
