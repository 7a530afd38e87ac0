"""The downloads a planned run would still make, said in the plan before any work: offline, that is where the run
would stop (prepare's at once, the study stages' after hours of training)."""

from __future__ import annotations

from pipeline import paths
from pipeline.lib.config import Params
from pipeline.lib.config_sections import STUDY_SOURCE
from pipeline.lib.idx import parse_sha256sums, verify_checksums
from pipeline.lib.io import DataError, sha256_file
from pipeline.lib.keras_weights import study_files

# where fetch_official (pipeline/lib/download.py) keeps the verified files, and the archive it extracts them from:
# either there, it downloads nothing (tests/test_download.py checks that the two agree)
KEPT_DIR, ARCHIVE = "emnist-balanced", "gzip.zip"


def download_lines(params: Params, stages: list[str]) -> list[str]:
    """One line per download the stages to run would make, with how to do without it."""
    return [*emnist_download_lines(params, stages), *study_download_lines(params, stages)]


def emnist_download_lines(params: Params, stages: list[str]) -> list[str]:
    """prepare's download of NIST's archive, unless its verified files or the whole archive are here already."""
    source = paths.resolve_source(params.data.source)
    if "prepare" not in stages or not source.is_file():
        return []
    checksums = official_checksums(params.data.source, source)
    if (paths.raw_dir() / ARCHIVE).is_file():
        return []
    try:
        verify_checksums(paths.raw_dir() / KEPT_DIR, checksums)
    except DataError:
        return [
            f"plan: prepare downloads EMNIST from {params.data.url} (about 560 MB, resumable); offline, add DATA=<a "
            "directory of IDX files> to the make command (or set data.source)"
        ]
    return []


def official_checksums(setting: str, listing) -> dict[str, str]:
    """data.source's listing of the official files, or the reason it is none, said before any stage runs."""
    try:
        return parse_sha256sums(listing)
    except DataError as err:
        raise DataError(f"data.source {setting}: not a listing of the official files' SHA-256s ({err})") from None


def study_download_lines(params: Params, stages: list[str]) -> list[str]:
    """The study stages' downloads of the published weights not here yet (or not the pinned ones)."""
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
