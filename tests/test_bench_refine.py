"""benchmarks/bench_refine.py: two refinement versions on the same images, each in its own process, side by side."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks import bench_refine
from pipeline import paths, tracking
from pipeline.lib import prepared
from pipeline.lib.config import parse_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.stages.train import train
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir

pytestmark = pytest.mark.slow


@pytest.fixture
def prepared_project(tmp_path, monkeypatch):
    """The params of a project under tmp_path, its data prepared."""
    monkeypatch.setenv("COMPRESSNET_ROOT", str(tmp_path / "project"))
    raw = {
        "data": {"source": str(make_emnist_dir(tmp_path / "emnist"))},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "threads": 1},
        "mlflow": {"log_model": False},
        "variants": {"plain": TINY_SPEC},
    }
    params = parse_params(raw)
    (tmp_path / "project").mkdir()
    paths.params_file().write_text(yaml.safe_dump(raw))  # the benchmark scores with the project's evaluate params
    prepare_from_directory(params.data, Path(params.data.source), paths.prepared_dir())
    return params


@pytest.fixture
def trained_model(prepared_project):
    train(prepared_project, "plain", 0, tracking.NoOpTracker())
    return paths.model_file("plain-seed0")


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    """Where tempfile makes the benchmark's temporary folder in this test."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.mark.parametrize("before", [None, "HEAD"])
def test_both_versions_refine_the_same_images_and_are_scored_alike(trained_model, tmp_path, temp_root, before):
    out = tmp_path / "refine.json"
    args = ["--model", str(trained_model), "--prepared", str(paths.prepared_dir()), "--per-class", "2"]
    assert (
        bench_refine.main(
            [*args, "--steps", "5", "--repeats", "2", "--out", str(out), *(["--before", before] if before else [])]
        )
        == 0
    )
    result = json.loads(out.read_text())
    labels = prepared.load_split(paths.prepared_dir(), "test")[1]
    assert result["images"] == sum(min(2, count) for count in np.unique(labels, return_counts=True)[1])
    assert result["before"]["settings"]["refine_steps"] == 100 and result["after"]["settings"]["refine_steps"] == 5
    assert result["before"]["settings"]["refine_method"] == "adam"  # whatever the revision's default method
    assert result["before"]["code"] == (before or "this working tree")
    for version in ("before", "after"):
        assert len(result[version]["ms_per_image_repeats"]) == 2 and result[version]["ms_per_image"] > 0
        assert result[version]["psnr_pooled_uint8"] > result["one_pass"]["psnr_pooled_uint8"]  # refining helps
    assert result["speedup"] == pytest.approx(result["before"]["ms_per_image"] / result["after"]["ms_per_image"])
    assert list(temp_root.iterdir()) == []  # the revision's tree and the refined latents went with the run


def test_a_failed_refinement_leaves_no_temporary_folder(prepared_project, tmp_path, temp_root):
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_bytes(b"not a model")
    args = ["--model", str(not_a_model), "--prepared", str(paths.prepared_dir()), "--per-class", "1"]
    with pytest.raises(SystemExit, match=r"refinement failed in the --before revision's checkout \(removed by now\)"):
        bench_refine.main([*args, "--before", "HEAD", "--out", str(tmp_path / "refine.json")])
    assert list(temp_root.iterdir()) == []
    assert not (tmp_path / "refine.json").exists()


@pytest.mark.parametrize("chunks", [1, 3])
def test_a_revision_s_lbfgs_runs_with_this_tree_s_step_count(trained_model, tmp_path, chunks):
    out = tmp_path / "refine.json"
    args = ["--model", str(trained_model), "--prepared", str(paths.prepared_dir()), "--per-class", "1", "--steps", "3"]
    args += ["--repeats", "1", "--chunks", str(chunks), "--out", str(out)]
    assert bench_refine.main([*args, "--before", "HEAD", "--before-method", "lbfgs"]) == 0
    result = json.loads(out.read_text())
    assert result["before"]["settings"] == result["after"]["settings"] == {"refine_steps": 3, "refine_method": "lbfgs"}
    assert result["before"]["code"] == "HEAD"
    assert result["before"]["psnr_pooled_uint8"] > result["one_pass"]["psnr_pooled_uint8"]  # HEAD's L-BFGS ran
    assert result["before"]["psnr_pooled_uint8"] == result["after"]["psnr_pooled_uint8"]  # the same search, not Adam


def test_a_missing_model_is_named_with_the_command_that_makes_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_refine.main(["--model", str(tmp_path / "none.pt"), "--prepared", str(tmp_path)])
    assert "none.pt does not exist: train it first (dvc exp run -S 'matrix=[model01_bn]')" in capsys.readouterr().err


def test_chunks_are_joined_into_the_images_order():
    chunks = [np.array([0, 2, 4]), np.array([1, 3])]
    parts = [
        {"refined": torch.tensor([[0.0], [2.0], [4.0]]), "seconds": 1.5},
        {"refined": torch.tensor([[1.0], [3.0]]), "seconds": 0.5},
    ]
    run = bench_refine.joined(parts, chunks)
    assert run["refined"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and run["seconds"] == 2.0
