"""The downloads a planned run would still make, said in the plan before any work: offline, that is where the run
would stop (prepare's at once, the study stages' after hours of training)."""

from __future__ import annotations

from pipeline import paths
from pipeline.lib.config import Params
from pipeline.lib.config_sections import STUDY_SOURCE
from pipeline.lib.download import official_files_kept
from pipeline.lib.idx import parse_sha256sums
from pipeline.lib.io import sha256_file
from pipeline.lib.keras_weights import study_files


def download_lines(params: Params, stages: list[str]) -> list[str]:
    """One line per download the stages to run would make, with how to do without it."""
    return [*emnist_download_lines(params, stages), *study_download_lines(params, stages)]


def emnist_download_lines(params: Params, stages: list[str]) -> list[str]:
    source = paths.resolve_source(params.data.source)
    if (
        "prepare" not in stages
        or not source.is_file()
        or official_files_kept(paths.raw_dir(), parse_sha256sums(source))
    ):
        return []
    return [
        f"plan: prepare downloads EMNIST from {params.data.url} (about 560 MB, resumable); offline, add DATA=<a "
        "directory of IDX files> to the make command (or set data.source)"
    ]


def study_download_lines(params: Params, stages: list[str]) -> list[str]:
    if params.study.source != STUDY_SOURCE:
        return []
    models = [name.removeprefix("study@") for name in stages if name.startswith("study@")]
    checksums = paths.project_path(params.study.checksums)
    pinned = parse_sha256sums(checksums) if checksums.is_file() else {}
    missing = [model for model in models if not all(downloaded(name, pinned) for name in study_files(model))]
    if not missing:
        return []
    return [
        f"plan: the study stages download the study's weights for {', '.join(missing)} from {params.study.url}; "
        "offline, add STUDY=<a directory holding the .keras files> to the make command (or set study.source; "
        "study.models: [] leaves them out)"
    ]


def downloaded(name: str, pinned: dict[str, str]) -> bool:
    """Whether the study stage would use the file already there: it downloads again one that is not the pinned one."""
    path = paths.study_raw_dir() / name
    return name in pinned and path.is_file() and sha256_file(path) == pinned[name]
