"""evaluate stage and report stage on a tiny trained model and generated data."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from pipeline import baselines, classifier, codec, evaluate, report
from pipeline.config import CodecConfig, parse_params
from pipeline.data import DataError
from pipeline.models import load_model, training_flops_per_image
from pipeline.prepare import prepare
from pipeline.train import OBJECTIVES, train_variant
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir, write_idx

REQUIRED_KEYS = {"mse", "psnr", "psnr_pooled", "ssim", "mse_decoder", "psnr_decoder", "ssim_decoder",
                 "max_abs_diff_decoder", "train_loss", "val_loss", "latent_dim", "bytes_per_image_float32",
                 "compression_ratio_float32", "bytes_per_image_uint8", "bytes_per_image_uint8_range", "psnr_uint8", "n_test",
                 "seed_protocol", "per_class"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object, str]:
    """Prepared data and two tiny variants trained once for the module, laid out like the repo."""
    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    params = parse_params({
        "data": {"source": str(make_emnist_dir(root / "emnist"))},
        "train": {"epochs": 1, "batch_size": 64, "threads": 1},
        "classifier": {"epochs": 10, "batch_size": 32},
        "mlflow": {"log_model": False},
        "variants": {"tinyA": TINY_SPEC, "tinyB": {**TINY_SPEC, "latent_dim": 4, "rate_weight": 0.01}},
    })
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        prepare(params.data, root / "prepared")
        for variant in params.variants:
            train_variant(params, variant, 0, prepared=root / "prepared", models_dir=root / "models",
                          history_dir=root / "reports" / "history", checkpoint_dir=root / "checkpoints")
        classifier.train_classifier(params, root / "prepared", root / "models" / "classifier.pt",
                                    root / "reports" / "classifier.json")
        baselines.write_baselines(params, root / "prepared", root / "reports" / "baselines.json")
    return root, params, uri


@pytest.fixture
def workspace(trained, tmp_path: Path, monkeypatch) -> dict:
    """A private copy of the trained layout (tests may delete files), on the module's tracking store."""
    root, params, uri = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("prepared", "models", "reports"):
        shutil.copytree(root / name, tmp_path / name)
    return {"params": params, **{name: tmp_path / name for name in ("prepared", "models", "reports")}}


def run_evaluate(ws: dict, variant: str) -> dict:
    return evaluate.evaluate_variant(ws["params"], variant, 0, prepared=ws["prepared"], models_dir=ws["models"],
                                     history_dir=ws["reports"] / "history", reports_dir=ws["reports"],
                                     classifier_file=ws["models"] / "classifier.pt")


def test_metrics_json_has_the_documented_keys(workspace):
    result = run_evaluate(workspace, "tinyA")
    written = json.loads((workspace["reports"] / "metrics" / "tinyA-seed0.json").read_text())
    assert REQUIRED_KEYS <= written.keys()
    assert written["n_test"] == 94 and written["latent_dim"] == 8
    assert written["bytes_per_image_float32"] == 32 and written["compression_ratio_float32"] == 784 / 32
    assert len(written["per_class"]) == 47 and {"char", "mse", "psnr", "ssim"} <= written["per_class"][0].keys()
    assert written["max_abs_diff_decoder"] == 0.0
    assert written["mse_decoder"] == written["mse"]
    assert written["refine_steps"] == 0 and "mse_refined" not in written  # the default: the encoder's single pass
    assert written["seed_protocol"]["indices"] == result["seed_protocol"]["indices"]
    assert len(written["seed_protocol"]["indices"]) == 10
    assert {"mse", "psnr", "ssim", "mse_decoder"} <= written["seed_protocol"].keys()


def test_losses_come_from_the_training_history(workspace):
    result = run_evaluate(workspace, "tinyA")
    history = (workspace["reports"] / "history" / "tinyA-seed0.csv").read_text().splitlines()
    last = dict(zip(history[0].split(","), history[-1].split(",")))
    assert result["train_loss"] == pytest.approx(float(last["train_loss"]))
    assert result["val_loss"] == pytest.approx(float(last["val_loss"]))


def test_ssim_matches_scikit_image_on_the_reconstructions(workspace):
    result = run_evaluate(workspace, "tinyA")
    model, _ = load_model(workspace["models"] / "tinyA-seed0.pt", torch.device("cpu"))
    images = np.load(workspace["prepared"] / "test_images.npy").astype(np.float64) / 255
    with torch.no_grad():
        recon = model(torch.from_numpy(images).float().unsqueeze(1)).squeeze(1).double().numpy()
    expected = np.mean([structural_similarity(a, b, data_range=1.0, win_size=11) for a, b in zip(images, recon)])
    assert result["ssim"] == pytest.approx(expected, abs=1e-5)  # model output is float32


def test_evaluation_is_deterministic_apart_from_the_run_block(workspace):
    path = workspace["reports"] / "metrics" / "tinyA-seed0.json"
    run_evaluate(workspace, "tinyA")
    first = json.loads(path.read_text())
    run_evaluate(workspace, "tinyA")
    again = json.loads(path.read_text())
    assert first.pop("run").keys() == again.pop("run").keys()
    assert first == again


def test_evaluate_logs_into_the_training_run(workspace):
    result = run_evaluate(workspace, "tinyA")
    run = mlflow.get_run(result["run"]["mlflow_run_id"])
    assert run.info.run_name == "tinyA-seed0"
    assert run.data.metrics["test_ssim"] == pytest.approx(result["ssim"])
    assert "val_loss" in run.data.metrics  # the same run the training logged into
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"reconstructions.png", "metrics.json"} <= artifacts


def _set_trained_loss(path: Path, loss: str | None) -> None:
    """Rewrite the model file's train.loss; None removes it, as in a file written before train.loss existed."""
    saved = torch.load(path, weights_only=False)
    saved["train"].pop("loss")
    if loss:
        saved["train"]["loss"] = loss
    torch.save(saved, path)


@pytest.mark.parametrize("loss", ["log_mse_ssim", None])
def test_train_flops_count_the_objective_the_model_was_trained_on(workspace, loss):
    path = workspace["models"] / "tinyA-seed0.pt"
    _set_trained_loss(path, loss)  # None: trained on MSE
    spec = load_model(path, torch.device("cpu"))[0].spec
    expected = training_flops_per_image(spec, objective=OBJECTIVES[loss or "mse"])
    assert run_evaluate(workspace, "tinyA")["train_flops_per_image"] == expected
    if loss:
        assert expected > training_flops_per_image(spec)


def test_a_model_trained_on_an_unknown_loss_is_a_clear_error(workspace):
    _set_trained_loss(workspace["models"] / "tinyA-seed0.pt", "l1")  # e.g. a file written by a newer version
    with pytest.raises(DataError, match=r"tinyA-seed0\.pt: trained on loss 'l1'.*one of mse, log_mse, log_mse_ssim"):
        run_evaluate(workspace, "tinyA")


def test_entropy_coded_variant_reports_real_stream_bytes(workspace):
    plain, coded = run_evaluate(workspace, "tinyA"), run_evaluate(workspace, "tinyB")
    assert "bytes_per_image_entropy" not in plain
    # the stream carries integer latents: its quality is the autoencoder's own, measured on the same test images
    assert 0 < coded["bytes_per_image_entropy"] < coded["bytes_per_image_float32"]
    assert coded["prior_bits_per_image"] / 8 == pytest.approx(coded["bytes_per_image_entropy"], rel=0.2, abs=1)
    # one file per image pays the header and checksum each time
    assert coded["bytes_per_image_entropy_standalone"] > coded["bytes_per_image_entropy"] + codec.HEADER.size
    # uint8: one byte per dimension plus the stream's header and calibration, shared by the 94 images
    assert plain["bytes_per_image_uint8"] == pytest.approx(8 + (codec.HEADER.size + 8 * 8 + 4 + 4) / 94)


def test_refined_latents_are_scored_as_codec_compress_stores_them(workspace):
    params = workspace["params"] = dataclasses.replace(workspace["params"], codec=CodecConfig(refine_steps=3))
    plain, coded = run_evaluate(workspace, "tinyA"), run_evaluate(workspace, "tinyB")
    assert plain["refine_steps"] == 3 and plain["mse_refined"] < plain["mse_decoder"]
    assert coded["refine_steps"] == 0 and "mse_refined" not in coded  # integer latents are not refined
    images, model_file = np.load(workspace["prepared"] / "test_images.npy"), workspace["models"] / "tinyA-seed0.pt"
    idx = write_idx(workspace["prepared"].parent / "test-images.idx", images.transpose(0, 2, 1))  # raw EMNIST layout
    stream = workspace["prepared"].parent / "test.cnz"
    codec.compress(params, "tinyA", 0, idx, stream, None, models_dir=workspace["models"], prepared=workspace["prepared"])
    model, _ = load_model(model_file, torch.device("cpu"))
    with torch.no_grad():
        stored = model.decode(codec.unpack(model, model_file, stream.read_bytes())[1])
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    assert plain["mse_uint8"] == pytest.approx(float((stored - x).square().mean()), rel=1e-5)
    ranged = stream.with_suffix(".range.cnz")  # the same codes range-coded: evaluate counts the file compress writes
    size = codec.compress(params, "tinyA", 0, idx, ranged, "uint8_range", models_dir=workspace["models"],
                          prepared=workspace["prepared"])
    assert plain["bytes_per_image_uint8_range"] == size / len(images)
    assert torch.equal(codec.unpack(model, model_file, ranged.read_bytes())[1],
                       codec.unpack(model, model_file, stream.read_bytes())[1])
    path, *_ = report.write_report(params, workspace["reports"], workspace["prepared"])
    settings = {row["setting"] for row in json.loads((workspace["reports"] / "rate_distortion.json").read_text())}
    assert {"float32, refined 3 steps, 8 dims", "uint8, refined 3 steps, 8 dims", "uint8 range-coded, refined 3 steps, 8 dims",
            "uint8, 4 dims"} <= settings
    assert "Quality target with the codec's encode-time latent refinement" in path.read_text()


def test_semantic_fidelity_is_the_classifiers_accuracy_on_reconstructions(workspace):
    result = run_evaluate(workspace, "tinyA")
    model, saved = classifier.load_classifier(workspace["models"] / "classifier.pt", torch.device("cpu"))
    originals, labels = np.load(workspace["prepared"] / "test_images.npy"), np.load(workspace["prepared"] / "test_labels.npy")
    assert classifier.accuracy(model, torch.from_numpy(originals).float().div(255).unsqueeze(1), labels) == saved["test_accuracy"]
    assert result["classifier_accuracy_originals"] == saved["test_accuracy"] > 0.5  # learnable fake glyphs
    autoencoder, _ = load_model(workspace["models"] / "tinyA-seed0.pt", torch.device("cpu"))
    with torch.no_grad():
        recon = autoencoder(torch.from_numpy(originals).float().div(255).unsqueeze(1))
    # the same reconstructions up to float rounding in another batching: at most one prediction may flip
    assert result["classifier_accuracy"] == pytest.approx(classifier.accuracy(model, recon, labels), abs=1 / len(labels))


def test_missing_model_is_a_clear_error(workspace):
    (workspace["models"] / "tinyA-seed0.pt").unlink()
    with pytest.raises(evaluate.data.DataError, match="tinyA-seed0.pt: missing"):
        run_evaluate(workspace, "tinyA")


def test_report_compares_every_variant(workspace):
    for variant in ("tinyA", "tinyB"):
        run_evaluate(workspace, variant)
    path, figures, results, summary = report.write_report(workspace["params"], workspace["reports"],
                                                          workspace["prepared"])
    text = path.read_text()
    best = results.set_index("variant").mse.idxmin()
    assert text.startswith("# CompressNet report\n\n## Findings")
    assert f"Best variant by mean test MSE over 1 seed(s): **{best}**" in text
    assert "no difference can be told from seed-to-seed luck" in text
    assert list(summary.index) == ["tinyA", "tinyB"] and list(summary.n) == [1, 1]
    assert all(f.exists() and f.stat().st_size > 5000 for f in figures)


def test_report_groups_variant_runs_under_a_report_run(workspace):
    ids = [run_evaluate(workspace, v)["run"]["mlflow_run_id"] for v in ("tinyA", "tinyB")]
    path, figures, _, summary = report.write_report(workspace["params"], workspace["reports"], workspace["prepared"])
    report.log_report("compressnet", path, figures, summary, ids)
    parents = {mlflow.get_run(i).data.tags["mlflow.parentRunId"] for i in ids}
    assert len(parents) == 1
    parent = mlflow.get_run(parents.pop())
    assert parent.info.run_name == "report"
    assert parent.data.metrics["tinyA.mse_mean"] == pytest.approx(summary.loc["tinyA", "mse_mean"])


def test_report_needs_every_variant_evaluated(workspace):
    run_evaluate(workspace, "tinyA")
    with pytest.raises(report.data.DataError, match="tinyB-seed0.json: missing"):
        report.write_report(workspace["params"], workspace["reports"], workspace["prepared"])


def test_dead_latent_units_of_a_constructed_model_are_counted():
    from pipeline.config import VariantSpec
    from pipeline.models import build_model

    model = build_model(VariantSpec(**{**TINY_SPEC, "latent_activation": "relu"})).eval()
    latent_layer = model.encoder[-2]
    with torch.no_grad():
        latent_layer.bias[:3] = -1e6  # these three ReLU units can never fire
        latent_layer.bias[3:] = 1e3  # and these always do
        latents = model.encode(torch.rand(64, 1, 28, 28))
    diagnostics = evaluate.latent_diagnostics(latents)
    assert diagnostics["dead_latent_units"] == 3
    assert diagnostics["latent_units"]["dead"] == [True] * 3 + [False] * 5
    assert diagnostics["active_latent_units_per_image"] == 5.0


def test_effective_dims_count_the_directions_holding_99_percent_of_variance():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 6, generator=generator))[0]
    scales = torch.tensor([10.0, 5.0, 3.0, 0.0, 0.0, 0.0])  # variance shares .75, .93, 1
    latents = (torch.randn(5000, 6, generator=generator) * scales) @ basis.T
    assert evaluate.latent_diagnostics(latents)["effective_latent_dims"] == 3
    assert evaluate.latent_diagnostics(torch.zeros(10, 4))["effective_latent_dims"] == 0
