from pathlib import Path

import pytest

from tests.fakedata import make_emnist_dir


@pytest.fixture
def emnist_dir(tmp_path: Path) -> Path:
    """A small EMNIST-like directory of gzip IDX files with SHA256SUMS and mapping.txt."""
    return make_emnist_dir(tmp_path / "emnist")


TINY_SPEC = {"encoder_filters": [4, 8], "encoder_strides": [2, 2], "latent_dim": 8,
             "decoder_filters": [8, 4], "decoder_strides": [2, 2]}


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch) -> str:
    """A throw-away sqlite tracking store; nothing reaches the repo's mlflow.db."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
