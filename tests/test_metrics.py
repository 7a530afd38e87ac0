"""pipeline.lib.metrics against scikit-image, per image, plus pooled values, shapes and batching."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.lib import metrics

TOL = 1e-6
SSIM_KW = {
    "uniform": {"win_size": 11},
    "gaussian": {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
}
REPO = Path(__file__).resolve().parents[1]
REAL_IMAGES = REPO.parent / "shared" / "data" / "emnist-bymerge-test-resplit" / "test-images-idx3-ubyte.gz"


def sk_ssim(x: np.ndarray, y: np.ndarray, window: str) -> np.ndarray:
    return np.array([structural_similarity(a, b, data_range=1.0, **SSIM_KW[window]) for a, b in zip(x, y)])


def sk_psnr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.array([peak_signal_noise_ratio(a, b, data_range=a.max() - a.min()) for a, b in zip(x, y)])


def random_pairs(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28))
    return x, np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1)


def structured_pairs(n=24, seed=1):
    """Smooth blob images (one pair per noise level) plus clipped noise, and constant-image edge cases."""
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.random((n, 28, 28)), sigma=(0, 3, 3))
    x = (x - x.min(axis=(1, 2), keepdims=True)) / np.ptp(x, axis=(1, 2), keepdims=True)
    y = np.clip(x + rng.normal(0, 1, x.shape) * np.linspace(0, 0.3, n)[:, None, None], 0, 1)
    const_x = np.stack([np.zeros((28, 28)), np.full((28, 28), 0.5), np.ones((28, 28)), np.full((28, 28), 0.2)])
    const_y = np.stack([np.zeros((28, 28)), np.full((28, 28), 0.7), y[0], np.full((28, 28), 0.2)])
    return np.concatenate([x, const_x]), np.concatenate([y, const_y])


def assert_matches_skimage(x: np.ndarray, y: np.ndarray):
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for window in metrics.WINDOWS:
        ours = metrics.ssim_per_image(tx, ty, window).numpy()
        np.testing.assert_allclose(ours, sk_ssim(x, y, window), rtol=0, atol=TOL, err_msg=window)
    ours, ref = metrics.psnr_per_image(tx, ty).numpy(), sk_psnr(x, y)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    np.testing.assert_array_equal(ours[~np.isfinite(ref)], ref[~np.isfinite(ref)])  # same inf / -inf / nan
    np.testing.assert_allclose(ours[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=0, atol=TOL)


@pytest.mark.parametrize("pairs", [random_pairs, structured_pairs])
def test_per_image_matches_skimage(pairs):
    assert_matches_skimage(*pairs())


def test_identical_and_constant_images():
    x, _ = structured_pairs(4)
    assert torch.all(metrics.ssim_per_image(torch.from_numpy(x), torch.from_numpy(x)) == 1)
    psnr = metrics.psnr_per_image(torch.from_numpy(x), torch.from_numpy(x))
    assert torch.isinf(psnr[:4]).all() and (psnr[:4] > 0).all()  # perfect reconstructions
    assert torch.isnan(psnr[4:]).all()  # constant references reproduced exactly: 0/0, as skimage


@pytest.mark.slow  # reads ../shared, which the fast suite never does; the slow suite runs beside it
def test_real_emnist_images_match_skimage():
    assert REAL_IMAGES.exists(), f"real EMNIST test images not at {REAL_IMAGES}: run the slow suite beside ../shared"
    from pipeline.lib.idx import read_idx

    images = read_idx(REAL_IMAGES, "images")[:50].transpose(0, 2, 1) / 255.0
    rng = np.random.default_rng(2)
    noisy = gaussian_filter(images, sigma=(0, 0.7, 0.7)) + rng.normal(0, 0.05, images.shape)
    assert_matches_skimage(images, np.clip(noisy, 0, 1))


def test_pooled_mse_and_psnr_on_known_inputs():
    x = torch.zeros(2, 28, 28)
    y = torch.stack([torch.full((28, 28), 0.1), torch.full((28, 28), 0.3)])
    torch.testing.assert_close(metrics.mse_per_image(x, y), torch.tensor([0.01, 0.09], dtype=torch.float64))
    assert metrics.psnr_pooled(0.01) == pytest.approx(20.0)
    assert metrics.psnr_pooled(0.0) == math.inf
    summary = metrics.summarize(x, y)
    assert summary["mse"] == pytest.approx(0.05)
    assert summary["psnr_pooled"] == pytest.approx(10 * math.log10(20))
    # constant references: per-image PSNR is -inf, excluded from the mean and counted
    assert math.isnan(summary["psnr"]) and summary["psnr_undefined_images"] == 2


def test_summarize_psnr_mean_skips_non_finite():
    x, y = random_pairs(6)
    y[1] = x[1]  # exact reconstruction: +inf
    x[2], y[2] = 0.4, 0.6  # constant reference: -inf
    summary = metrics.summarize(torch.from_numpy(x), torch.from_numpy(y), window="gaussian")
    keep = [0, 3, 4, 5]
    assert summary["psnr"] == pytest.approx(sk_psnr(x, y)[keep].mean(), abs=TOL)
    assert summary["psnr_inf_images"] == 1 and summary["psnr_undefined_images"] == 1
    assert summary["ssim"] == pytest.approx(sk_ssim(x, y, "gaussian").mean(), abs=TOL)
    assert summary["mse"] == pytest.approx(np.mean((x - y) ** 2), abs=1e-12)


def test_shapes_and_dtypes():
    x, y = random_pairs(5)
    flat = metrics.per_image(torch.from_numpy(x), torch.from_numpy(y))
    chan = metrics.per_image(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None])
    f32 = metrics.per_image(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    for name in ("mse", "psnr", "ssim"):
        assert flat[name].shape == (5,) and flat[name].dtype == torch.float64
        torch.testing.assert_close(flat[name], chan[name], rtol=0, atol=0)
        torch.testing.assert_close(flat[name], f32[name], rtol=0, atol=1e-5)  # float32 input rounding only
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.ssim_per_image(torch.zeros(2, 28, 28), torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="expected"):
        metrics.mse_per_image(torch.zeros(2, 3, 28, 28), torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="window"):
        metrics.ssim_per_image(torch.zeros(2, 28, 28), torch.zeros(2, 28, 28), window="box")


@pytest.mark.parametrize("window", metrics.WINDOWS)
def test_batching_gives_same_numbers(window):
    x, y = (torch.from_numpy(a) for a in structured_pairs(30))
    whole = metrics.per_image(x, y, window, batch_size=2048)
    for batch_size in (1, 7):
        parts = metrics.per_image(x, y, window, batch_size=batch_size)
        for name in whole:
            torch.testing.assert_close(parts[name], whole[name], rtol=0, atol=1e-12, equal_nan=True)
    assert metrics.summarize(x, y, window, batch_size=4) == pytest.approx(metrics.summarize(x, y, window))
