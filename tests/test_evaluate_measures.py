"""What evaluate measures, recomputed here from the model's own reconstructions: SSIM against scikit-image, the
study's protocol, per-class PSNR, the report's sample grids and the classifier's accuracy (the project of
tests/evaluate_support.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from pipeline import paths
from pipeline.lib import classifier
from pipeline.lib.models import load_model
from tests.evaluate_support import model_path, run_evaluate


def test_ssim_matches_scikit_image_on_the_reconstructions(workspace):
    result = run_evaluate(workspace, "tinyA")
    model, _ = load_model(model_path(), torch.device("cpu"))
    images = np.load(paths.prepared_dir() / "test_images.npy").astype(np.float64) / 255
    with torch.no_grad():
        recon = model(torch.from_numpy(images).float().unsqueeze(1)).squeeze(1).double().numpy()
    expected = np.mean([structural_similarity(a, b, data_range=1.0, win_size=11) for a, b in zip(images, recon)])
    assert result["ssim"] == pytest.approx(expected, abs=1e-5)  # model output is float32


def test_protocol_per_class_and_samples_describe_the_images_they_name(workspace):
    """Each number recomputed here from the model's own reconstructions of the images the metrics JSON names."""
    saved = torch.load(model_path(), weights_only=False)  # the tiny model outputs about 0.5 for every image: with
    weights = {k: 2 * v if v.dim() > 1 else v for k, v in saved["state_dict"].items()}  # its weights doubled, the
    torch.save({**saved, "state_dict": weights}, model_path())  # reconstructions differ by tens of grey levels
    result = run_evaluate(workspace, "tinyA")
    model, _ = load_model(model_path(), torch.device("cpu"))
    images = np.load(paths.prepared_dir() / "test_images.npy").astype(np.float64) / 255
    labels = np.load(paths.prepared_dir() / "test_labels.npy")
    with torch.no_grad():
        recon = model(torch.from_numpy(images).float().unsqueeze(1)).squeeze(1).double().numpy()
    mse = ((images - recon) ** 2).mean(axis=(1, 2))
    protocol = result["seed_protocol"]
    assert len(protocol["indices"]) < len(images)  # a subset, so the whole split's mean would not match
    assert protocol["mse"] == pytest.approx(mse[protocol["indices"]].mean(), rel=1e-4)
    psnr = 10 * np.log10((images.max(axis=(1, 2)) - images.min(axis=(1, 2))) ** 2 / mse)
    for row in result["per_class"][:3]:
        assert row["psnr"] == pytest.approx(psnr[labels == row["label"]].mean(), rel=1e-4), row["char"]
        assert row["n"] == (labels == row["label"]).sum()
    samples = np.load(paths.samples_file("tinyA-seed0")).astype(int)
    expected = np.round(np.clip(recon[result["sample_indices"]], 0, 1) * 255)  # float32 rounding: 1 level at most
    assert samples.shape == expected.shape and np.abs(samples - expected).max() <= 1


def test_semantic_fidelity_is_the_classifiers_accuracy_on_reconstructions(workspace):
    result = run_evaluate(workspace, "tinyA")
    model, saved = classifier.load_classifier(paths.classifier_file(), torch.device("cpu"))
    originals = np.load(paths.prepared_dir() / "test_images.npy")
    labels = np.load(paths.prepared_dir() / "test_labels.npy")
    assert (
        classifier.accuracy(model, torch.from_numpy(originals).float().div(255).unsqueeze(1), labels)
        == saved["test_accuracy"]
    )
    assert result["classifier_accuracy_originals"] == saved["test_accuracy"] > 0.5  # learnable fake glyphs
    assert json.loads(paths.classifier_result_file().read_text())["test_accuracy"] == saved["test_accuracy"]
    autoencoder, _ = load_model(model_path(), torch.device("cpu"))
    with torch.no_grad():
        recon = autoencoder(torch.from_numpy(originals).float().div(255).unsqueeze(1))
    # the same reconstructions up to float rounding in another batching: at most one prediction may flip
    assert result["classifier_accuracy"] == pytest.approx(
        classifier.accuracy(model, recon, labels), abs=1 / len(labels)
    )
