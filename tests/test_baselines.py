"""The baselines stage (classical codecs and PCA: pipeline.lib.baselines, pipeline.stages.baselines) on generated
data: its rows, its worker processes, its errors."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import bench_baselines
from pipeline import paths
from pipeline.lib import baselines, prepared
from pipeline.lib.config import parse_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.io import DataError
from pipeline.stages.baselines import main, write_baselines
from tests.conftest import REPO, TINY_SPEC
from tests.fakedata import make_emnist_dir

RATE_DISTORTION = {"jpeg_qualities": [5, 90], "webp_qualities": [0, 90], "pca_dims": [4, 64, 300]}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    """reports/baselines.json as the stage writes it, in a project under a tmp root, made once for the module."""
    base = tmp_path_factory.mktemp("baselines")
    emnist = make_emnist_dir(base / "emnist")
    params = parse_params(
        {"data": {"source": str(emnist)}, "variants": {"tiny": TINY_SPEC}, "rate_distortion": RATE_DISTORTION}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPRESSNET_ROOT", str(base / "project"))
        prepare_from_directory(params.data, emnist, paths.prepared_dir())
        message = write_baselines(params)
        return {
            "json": json.loads(paths.baselines_file().read_text()),
            "message": message,
            "file": paths.baselines_file(),
            "digest": prepared.manifest_digest(paths.prepared_dir()),
            "params": params,
            "n_test": len(prepared.load_split(paths.prepared_dir(), "test")[0]),
            "prepared": paths.prepared_dir(),
        }


@pytest.fixture(scope="module")
def rows(written) -> pd.DataFrame:
    return pd.DataFrame(written["json"]["rows"]).set_index(["method", "setting"])


def test_every_configured_baseline_has_a_row(rows):
    assert sorted(rows.index) == sorted(
        [("pca", f"{d} dims") for d in (4, 64, 300)]
        + [("pca-uint8", f"{d} dims") for d in (4, 64, 300)]
        + [
            ("jpeg", "quality 5"),
            ("jpeg", "quality 90"),
            ("webp", "quality 0"),
            ("webp", "quality 90"),
            ("png", "lossless, optimize"),
            ("gzip", "whole test set, level 9"),
        ]
    )


def test_the_stage_records_the_test_set_it_measured(written):
    assert written["message"] == f"wrote {len(written['json']['rows'])} rows to {written['file']}"
    assert written["json"]["n_test"] == written["n_test"] == 94
    assert written["json"]["ssim_window"] == written["params"].evaluate.ssim_window
    assert written["json"]["data_manifest_sha256"] == written["digest"]


def test_the_codecs_in_processes_give_the_rows_they_give_one_at_a_time(written, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_baselines.main(["--prepared", str(written["prepared"]), "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["same_rows"] and result["test_images"] == written["n_test"]
    assert all(len(seconds) == 1 for seconds in result["seconds"].values()) and "speed-up" in capsys.readouterr().out


def test_one_progress_bar_counts_the_pca_settings_then_the_codecs(capsys):
    cfg = parse_params({"variants": {"tiny": TINY_SPEC}, "rate_distortion": {**RATE_DISTORTION, "pca_dims": [4]}})
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    baselines.compute_baselines(cfg.rate_distortion, "uniform", images, images, workers=2)
    settings = 1 + 2 + 2 + 1  # PCA's one dimension count, JPEG's and WebP's two qualities, PNG
    final = capsys.readouterr().err.split("\r")[-1]  # the bar as it closed
    assert final.startswith("baselines: 100%|") and f" {settings}/{settings} " in final


def test_an_error_beside_the_codec_workers_cancels_them_and_gives_torch_its_threads_back(monkeypatch):
    cfg = parse_params({"variants": {"tiny": TINY_SPEC}}).rate_distortion
    images, before = np.zeros((20, 28, 28), np.uint8), torch.get_num_threads()
    with pytest.raises(DataError, match="pca_dims: 128 dimensions need"):  # before any worker starts
        baselines.compute_baselines(cfg, "uniform", images, images, False, workers=2)

    def failing_pca(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(baselines, "pca_rows", failing_pca)
    with pytest.raises(KeyboardInterrupt):
        baselines.compute_baselines(dataclasses.replace(cfg, pca_dims=[4]), "uniform", images, images, False, 2)
    assert torch.get_num_threads() == before


HOLDER = """
import os, numpy as np
from pipeline.lib import baselines
with baselines._codec_pool(1, np.zeros((1, 28, 28), np.uint8)) as pool:
    print(pool.submit(os.getpid).result(), flush=True)
    os._exit(0)  # as a killed stage: the pool is not shut down
"""
ADOPTER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: the orphaned worker becomes this process's child
worker = int(subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True, check=True).stdout)
_, status = os.waitpid(worker, 0)
print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exited")
"""


def test_a_codec_worker_dies_with_the_stage_that_started_it():
    adopter = [sys.executable, "-c", ADOPTER, HOLDER]
    result = subprocess.run(adopter, capture_output=True, text=True, cwd=REPO, timeout=300)  # a hang, not a time
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(int(signal.SIGKILL))


def test_the_stage_without_prepared_data_is_one_error_line(project_root, capsys):
    (project_root / "params.yaml").write_text(f"variants: {{tiny: {TINY_SPEC}}}\n".replace("'", ""))
    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("baselines: error: ") and err.count("\n") == 1
    assert f"{project_root / 'data' / 'prepared' / 'train_images.npy'}: missing; run the prepare stage first" in err
    assert not paths.baselines_file().exists()


def test_a_baseline_row_measures_the_decoded_images():
    originals = np.full((3, 28, 28), 100, np.uint8)
    decoded = originals.copy()
    decoded[:, 0, 0] = 110  # one pixel off by 10/255 in every image
    row = baselines.row("m", "s", 12.5, originals, decoded, "uniform")
    assert row["mse"] == pytest.approx((10 / 255) ** 2 / 784)
    assert row["psnr_pooled"] == pytest.approx(10 * np.log10(784 / (10 / 255) ** 2))
    assert (row["method"], row["setting"], row["bytes_per_image"]) == ("m", "s", 12.5) and row["ssim"] < 1


def test_lossless_codecs_are_exact_and_have_no_psnr(rows):
    for method in ("png", "gzip"):
        row = rows.loc[method].iloc[0]
        assert row.mse == 0 and row.ssim == 1 and pd.isna(row.psnr_pooled) and pd.isna(row.psnr)  # JSON null
        assert 0 < row.bytes_per_image < 784 * 1.1


def test_more_bytes_buy_more_quality(rows):
    for method, low, high in (
        ("jpeg", "quality 5", "quality 90"),
        ("webp", "quality 0", "quality 90"),
        ("pca", "4 dims", "64 dims"),
    ):
        assert rows.loc[(method, high), "bytes_per_image"] > rows.loc[(method, low), "bytes_per_image"]
        assert rows.loc[(method, high), "psnr_pooled"] > rows.loc[(method, low), "psnr_pooled"]


def test_pca_improves_with_dimensions_and_needs_enough_train_images(rows):
    psnr = [rows.loc[("pca", f"{d} dims"), "psnr_pooled"] for d in (4, 64, 300)]
    assert psnr == sorted(psnr) and psnr[-1] > 30
    images = np.zeros((10, 28, 28), np.uint8)
    with pytest.raises(DataError, match="rate_distortion.pca_dims: 16 dimensions need"):
        baselines.pca_rows(images, images, [4, 16], "uniform")
    assert rows.loc[("pca", "64 dims"), "bytes_per_image"] == 256
    # uint8 coefficients: a quarter of the bytes (plus the per-stream grid), a little less quality
    assert rows.loc[("pca-uint8", "64 dims"), "bytes_per_image"] < 64 + 8 * 64 / 10
    assert rows.loc[("pca-uint8", "64 dims"), "psnr_pooled"] < rows.loc[("pca", "64 dims"), "psnr_pooled"]
