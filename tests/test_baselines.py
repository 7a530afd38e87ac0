"""The baselines stage (classical codecs and PCA: pipeline.lib.baselines, pipeline.stages.baselines), the
rate-distortion assembly (pipeline.lib.rate_distortion) and its figure, on generated data."""

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
from matplotlib.colors import to_hex

from benchmarks import bench_baselines
from pipeline import paths
from pipeline.lib import baselines, figures, prepared, rate_distortion
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


def _means(**variants) -> pd.DataFrame:
    keys = [
        "latent_dim",
        "psnr_pooled",
        "psnr",
        "ssim",
        "mse",
        "classifier_accuracy",
        "bytes_per_image_uint8",
        "psnr_pooled_uint8",
        "psnr_uint8",
        "ssim_uint8",
        "mse_uint8",
        "bytes_per_image_entropy",
        "bytes_per_image_entropy_standalone",
        "bytes_per_image_uint8_range",
    ]
    return pd.DataFrame({name: dict(zip(keys, values)) for name, values in variants.items()}).T


def test_variant_rows_give_one_point_per_storage_form():
    means = _means(
        plain=[32, 24.0, 25.0, 0.97, 0.004, 0.8, 32.1, 23.9, 24.9, 0.969, 0.0041, np.nan, np.nan],
        coded=[16, 22.0, 23.0, 0.95, 0.006, 0.7, 16.1, 21.0, 22.0, 0.94, 0.008, 9.5, 40.5, 14.0],
    )
    table = rate_distortion.assemble(
        means,
        [
            {
                "method": "webp",
                "setting": "quality 5",
                "bytes_per_image": 135.0,
                "psnr_pooled": 27.1,
                "psnr": 28.0,
                "ssim": 0.98,
                "mse": 0.002,
            }
        ],
    )
    forms = {(r.method, r.setting): r.bytes_per_image for r in table.itertuples()}
    assert forms == {
        ("plain", "float32, 32 dims"): 128.0,
        ("plain", "uint8, 32 dims"): 32.1,
        ("coded", "uint8, 16 dims"): 16.1,
        ("coded", "uint8 range-coded, 16 dims"): 14.0,
        ("coded", "entropy-coded, 16 dims"): 9.5,
        ("coded", "entropy-coded one file per image, 16 dims"): 40.5,
        ("webp", "quality 5"): 135.0,
    }
    assert list(table.kind) == ["variant"] * 6 + ["baseline"]
    range_coded = table.set_index(["method", "setting"]).loc[("coded", "uint8 range-coded, 16 dims")]
    assert (range_coded.psnr_pooled, range_coded.ssim) == (21.0, 0.94)  # the uint8 codes, so the uint8 quality
    finding = rate_distortion.moonshot_finding(table)
    assert "not met (5.10 dB short)" in finding and "coded entropy-coded, 16 dims at 9.5 B/image" in finding
    only_plain = rate_distortion.moonshot_finding(table[table.method != "coded"])  # every point above 32 bytes
    assert (
        "not met; no variant stores an image in ≤ 32 bytes (the smallest point is plain uint8, 32 dims at "
        "32.10 B/image, 23.90 dB pooled)"
    ) in only_plain


def test_quality_target_counts_only_32_dim_variants_within_model01s_flops():
    keys = ["latent_dim", "train_flops_per_image", "psnr", "ssim"]
    means = pd.DataFrame(
        {
            "small": dict(zip(keys, [32, 300e6, 25.5, 0.976])),
            "costly": dict(zip(keys, [32, 400e6, 28.0, 0.990])),  # better, but over the budget
            "wide": dict(zip(keys, [64, 300e6, 29.0, 0.992])),
        }
    ).T  # better, but not 32 numbers
    [finding] = rate_distortion.quality_target_findings(means, budget_flops=332e6)  # no refined latents: one line
    assert "not met (1.50 dB, 0.0090 SSIM short)" in finding and "the best is small at 25.50 dB" in finding
    means.loc["costly", "train_flops_per_image"] = 332e6  # exactly model01's budget is allowed
    assert (
        "met; the best is costly at 28.00 dB" in rate_distortion.quality_target_findings(means, budget_flops=332e6)[0]
    )
    assert "no variant here" in rate_distortion.quality_target_findings(means.loc[["wide"]], budget_flops=332e6)[0]


def test_quality_target_is_answered_again_for_refined_latents():
    keys = ["latent_dim", "train_flops_per_image", "psnr", "ssim", "refine_steps", "psnr_refined", "ssim_refined"]
    means = pd.DataFrame(
        {
            "single": dict(zip(keys, [32, 300e6, 26.6, 0.981, 0, np.nan, np.nan])),
            "refined": dict(zip(keys, [32, 300e6, 26.5, 0.980, 100, 28.4, 0.987])),
        }
    ).T
    one_pass, refined = rate_distortion.quality_target_findings(means, budget_flops=332e6)
    assert "in one encoder pass" in one_pass and "not met" in one_pass and "the best is single at 26.60 dB" in one_pass
    assert "with the codec's encode-time latent refinement" in refined
    assert (
        "met; the best is refined at 28.40 dB, SSIM 0.9870" in refined
        and "up to 100 refinement steps per image" in refined
    )


def test_rd_figure_keeps_refined_points_apart_from_the_encoders():
    settings = [
        "float32, 32 dims",
        "float32, refined ≤100 steps, 32 dims",
        "uint8, 32 dims",
        "uint8, refined ≤100 steps, 32 dims",
        "uint8 range-coded, refined ≤100 steps, 32 dims",
        "entropy-coded one file per image, 16 dims",
    ]
    table = pd.DataFrame({"method": "m", "setting": settings, "kind": "variant"})
    assert list(figures._variant_points(table)) == [
        ("m", "float32"),
        ("m", "float32, refined ≤100 steps"),
        ("m", "uint8"),
        ("m", "uint8, refined ≤100 steps"),
        ("m", "uint8 range-coded, refined ≤100 steps"),
        ("m", "entropy-coded one file per image"),
    ]


def test_rd_figure_gives_each_method_its_own_colour_and_each_variant_one(monkeypatch, tmp_path):
    means = _means(
        **{
            f"v{i}": [32, 24.0 + i, 25.0, 0.97, 0.004, 0.8, 32.1, 23.9, 24.9, 0.969, 0.0041, np.nan, np.nan]
            for i in range(8)
        }
    )
    baseline_rows = [
        {
            "method": m,
            "setting": f"quality {q}",
            "bytes_per_image": 100.0 + q,
            "psnr_pooled": 20.0 + q,
            "psnr": 21.0 + q,
            "ssim": 0.9,
            "mse": 0.01,
        }
        for m in ("jpeg", "webp", "pca")
        for q in (1, 2)
    ]
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, out, **kwargs: saved.append(fig))
    figures.rate_distortion(rate_distortion.assemble(means, baseline_rows), tmp_path / "rd.png")
    axis = saved[0].axes[0]
    colours = [(line.get_label(), to_hex(line.get_color())) for line in axis.get_lines()]
    colours += [(points.get_label(), to_hex(points.get_facecolor()[0])) for points in axis.collections]
    by_method: dict[str, set] = {}
    for label, colour in colours:
        if not label.startswith("_"):  # the moonshot guides are unlabelled
            by_method.setdefault(label.split()[0], set()).add(colour)
    assert len(by_method) == 11 and all(len(c) == 1 for c in by_method.values())  # float32 and uint8 share one
    assert len(set().union(*by_method.values())) == 11
