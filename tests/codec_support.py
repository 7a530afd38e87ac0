"""What the codec tests share: a project (prepared data, two tiny trained variants, the test split as an IDX file)
under its own root, trained once per test process (the fixture `codec_project`, registered in conftest.py), and
`codec_root`, which points the CLI's paths (pipeline.paths) at it. The codec tests never change its files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import paths, tracking
from pipeline.lib.config import parse_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.models import load_model
from pipeline.stages.train import train
from pipeline.tools import codec as codec_tool
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir, write_idx

RATE_SPEC = {**TINY_SPEC, "rate_weight": 0.01}


@pytest.fixture(scope="session")
def codec_project(tmp_path_factory) -> dict:
    """A project (prepared data, two tiny trained variants) under its own root, made once per test process."""
    base = tmp_path_factory.mktemp("codec")
    root = base / "project"
    # lr 0.01: in two tiny epochs the decoder learns enough for refinement to have an error to lower
    params = parse_params(
        {
            "data": {"source": str(make_emnist_dir(base / "emnist"))},
            "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "threads": 1},
            "mlflow": {"log_model": False},
            "variants": {"plain": TINY_SPEC, "coded": RATE_SPEC},
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPRESSNET_ROOT", str(root))
        prepare_from_directory(params.data, Path(params.data.source), paths.prepared_dir())
        for variant in params.variants:
            train(params, variant, 0, tracking.NoOpTracker())
    test_images = np.load(root / "data" / "prepared" / "test_images.npy")
    idx = write_idx(base / "test-images-idx3-ubyte.gz", test_images.transpose(0, 2, 1))  # EMNIST raw layout
    return {"root": root, "params": params, "images": test_images, "idx": idx}


@pytest.fixture
def codec_root(codec_project, monkeypatch) -> Path:
    """The CLI's paths point at the codec project."""
    monkeypatch.setenv("COMPRESSNET_ROOT", str(codec_project["root"]))
    return codec_project["root"]


def model_path(variant: str) -> Path:
    """The variant's seed-0 model file in the project COMPRESSNET_ROOT points at (codec_root: the codec project)."""
    return paths.model_file(f"{variant}-seed0")


def model_of(variant: str):
    """The variant's seed-0 model, loaded on the CPU (as model_path)."""
    return load_model(model_path(variant), torch.device("cpu"))[0]


def round_trip(project: dict, variant: str, tmp_path: Path, mode: str | None = None, source: Path | None = None):
    """Compress the project's test images (or source) with the CLI's functions, decompress them: the stream, the
    decoded images."""
    stream, out = tmp_path / "stream.cnz", tmp_path / "decoded"
    size = codec_tool.compress(project["params"], variant, 0, source or project["idx"], stream, mode)
    count = codec_tool.decompress(project["params"], variant, 0, stream, out)
    decoded = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))])
    assert size == stream.stat().st_size and count == len(decoded)
    return stream, decoded
