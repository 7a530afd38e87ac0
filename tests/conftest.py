from pathlib import Path

import pytest

from tests.fakedata import make_emnist_dir


@pytest.fixture
def emnist_dir(tmp_path: Path) -> Path:
    """A small EMNIST-like directory of gzip IDX files with SHA256SUMS and mapping.txt."""
    return make_emnist_dir(tmp_path / "emnist")
