"""The evaluate stage (pipeline.lib.evaluation + pipeline.stages.evaluate) on tiny models trained once per
test session and generated data, in a project under a tmp COMPRESSNET_ROOT with its own MLflow store; and the latent
diagnostics on constructed models."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import paths, tracking
from pipeline.lib import codec, rate_distortion, report_text, schema
from pipeline.lib.config import CodecConfig, VariantSpec
from pipeline.lib.evaluation import evaluate_model, final_losses, latent_diagnostics, output_spread
from pipeline.lib.io import DataError
from pipeline.lib.losses import OBJECTIVES
from pipeline.lib.models import COLLAPSED_RANGE, MISSING_MODEL, build_model, load_model, training_flops_per_image
from pipeline.stages import evaluate as evaluate_stage
from pipeline.tools import codec as codec_tool
from tests.conftest import TINY_SPEC
from tests.evaluate_support import client, model_path, run_evaluate
from tests.fakedata import write_idx


def test_losses_come_from_the_training_history(workspace):
    result = run_evaluate(workspace, "tinyA")
    history = paths.history_file("tinyA-seed0").read_text().splitlines()
    last = dict(zip(history[0].split(","), history[-1].split(",")))
    assert result["train_loss"] == pytest.approx(float(last["train_loss"]))
    assert result["val_loss"] == pytest.approx(float(last["val_loss"]))
    assert result["epochs"] == int(last["epoch"])


def test_missing_history_is_a_clear_error(workspace):
    paths.history_file("tinyA-seed0").unlink()
    with pytest.raises(DataError, match=r"tinyA-seed0\.csv: missing; run the train stage first"):
        run_evaluate(workspace, "tinyA")


def test_the_library_evaluation_is_deterministic_and_the_stage_adds_only_the_run_block(workspace, tmp_path):
    """evaluate_model on files anywhere (no project layout) measures what the stage writes, apart from "run"."""
    elsewhere = tmp_path / "elsewhere"
    for source in (model_path(), paths.prepared_dir(), paths.history_file("tinyA-seed0"), paths.classifier_file()):
        copy = shutil.copytree if source.is_dir() else shutil.copy
        elsewhere.mkdir(exist_ok=True)
        copy(source, elsewhere / source.name)
    stage = run_evaluate(workspace, "tinyA")
    evaluation = evaluate_model(
        workspace["params"],
        "tinyA",
        0,
        elsewhere / "tinyA-seed0.pt",
        elsewhere / "prepared",
        final_losses(elsewhere / "tinyA-seed0.csv"),
        elsewhere / "classifier.pt",
    )
    library = evaluation.metrics
    assert set(stage["run"]) - set(library["run"]) == {"dvc", "mlflow_run_id"}  # what the stage adds
    assert stage["run"]["dvc"] == {
        "prepared_md5": "unknown",
        "model_md5": "unknown",
        "prepare_lock_sha256": "unknown",
        "train_lock_sha256": "unknown",
    }  # outside DVC
    assert library.pop("run")["model_sha256"] == stage.pop("run")["model_sha256"]
    assert library == stage
    saved = torch.load(model_path(), weights_only=False)
    assert evaluation.trained_run_id == saved["mlflow_run_id"] is not None
    assert np.array_equal(evaluation.samples, np.load(paths.samples_file("tinyA-seed0")))
    test_images = np.load(paths.prepared_dir() / "test_images.npy")
    assert np.array_equal(evaluation.originals, test_images[stage["sample_indices"]])


def test_evaluate_logs_into_the_training_run(workspace):
    result = run_evaluate(workspace, "tinyA", tracking.MlflowTracker())
    run_id = result["run"]["mlflow_run_id"]
    assert run_id == torch.load(model_path(), weights_only=False)["mlflow_run_id"]
    run = client(workspace).get_run(run_id)
    assert run.info.run_name == "tinyA-seed0"
    assert run.data.metrics["test_ssim"] == pytest.approx(result["ssim"])
    assert run.data.metrics["protocol_mse"] == pytest.approx(result["seed_protocol"]["mse"])
    assert "val_loss" in run.data.metrics  # the same run the training logged into
    assert run.data.tags["evaluated"] == "true"
    assert run.data.tags["evaluate.model_sha256"] == result["run"]["model_sha256"]
    artifacts = {a.path for a in client(workspace).list_artifacts(run_id)}
    assert {"reconstructions.png", "metrics.json", "per_class.json"} <= artifacts


@pytest.mark.parametrize("status", ["FINISHED", "KILLED"])
def test_evaluate_never_changes_the_training_runs_status(workspace, status):
    """evaluate attaches to the training run without reopening it: its status and end time stay as they were."""
    run_id = torch.load(model_path(), weights_only=False)["mlflow_run_id"]
    if status != "FINISHED":  # e.g. a run stopped after its last epoch was saved
        client(workspace).set_terminated(run_id, status)
    before = client(workspace).get_run(run_id).info
    assert before.status == status
    run_evaluate(workspace, "tinyA", tracking.MlflowTracker())
    after = client(workspace).get_run(run_id)
    assert (after.info.status, after.info.end_time) == (status, before.end_time)
    assert "test_mse" in after.data.metrics


def test_a_training_run_missing_from_the_store_gets_a_finished_run_of_its_own(workspace, capsys):
    trained_id = torch.load(model_path(), weights_only=False)["mlflow_run_id"]
    client(workspace).delete_run(trained_id)
    result = run_evaluate(workspace, "tinyA", tracking.MlflowTracker())
    assert f"training run {trained_id} is not in this store; logging to a new run" in capsys.readouterr().out
    run = client(workspace).get_run(result["run"]["mlflow_run_id"])
    assert run.info.run_id != trained_id and run.info.run_name == "tinyA-seed0-evaluate"
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "evaluate@tinyA-0"
    assert run.data.metrics["test_mse"] == pytest.approx(result["mse"])


def _set_trained_loss(path: Path, loss: str | None) -> None:
    """Rewrite the model file's train.loss; None removes it, as in a file written before train.loss existed. Either
    way the file loses its FLOP count, as files written before training stored it, so evaluate counts again."""
    saved = torch.load(path, weights_only=False)
    saved["train"].pop("loss")
    saved.pop("train_flops_per_image")
    if loss:
        saved["train"]["loss"] = loss
    torch.save(saved, path)


@pytest.mark.parametrize("loss", ["log_mse_ssim", None])
def test_train_flops_count_the_objective_the_model_was_trained_on(workspace, loss):
    _set_trained_loss(model_path(), loss)  # None: trained on MSE
    spec = load_model(model_path(), torch.device("cpu"))[0].spec
    expected = training_flops_per_image(spec, objective=OBJECTIVES[loss or "mse"])
    assert run_evaluate(workspace, "tinyA")["train_flops_per_image"] == expected
    if loss:
        assert expected > training_flops_per_image(spec)


def test_evaluate_takes_the_flop_count_training_stored_without_counting_again(workspace, monkeypatch):
    saved = torch.load(model_path(), weights_only=False)
    model = load_model(model_path(), torch.device("cpu"))[0]
    objective = OBJECTIVES[saved["train"]["loss"]]
    assert saved["train_flops_per_image"] == training_flops_per_image(model.spec, objective=objective)

    def count_again(*args, **kwargs):
        raise AssertionError("evaluate ran the FLOP counter, whose first use imports torch._dynamo")

    monkeypatch.setattr("pipeline.lib.evaluation.training_flops_per_image", count_again)
    assert run_evaluate(workspace, "tinyA")["train_flops_per_image"] == saved["train_flops_per_image"]


def test_a_model_trained_on_an_unknown_loss_is_a_clear_error(workspace):
    _set_trained_loss(model_path(), "l1")  # e.g. a file written by a newer version
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
    images, model_file = np.load(paths.prepared_dir() / "test_images.npy"), model_path()
    idx = write_idx(workspace["root"] / "test-images.idx", images.transpose(0, 2, 1))  # raw EMNIST layout
    stream = workspace["root"] / "test.cnz"
    codec_tool.compress(params, "tinyA", 0, idx, stream, None)
    model, _ = load_model(model_file, torch.device("cpu"))
    with torch.no_grad():
        stored = model.decode(codec.unpack(model, model_file, stream.read_bytes())[1])
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    assert plain["mse_uint8"] == pytest.approx(float((stored - x).square().mean()), rel=1e-5)
    ranged = stream.with_suffix(".range.cnz")  # the same codes range-coded: evaluate counts the file compress writes
    size = codec_tool.compress(params, "tinyA", 0, idx, ranged, "uint8_range")
    assert plain["bytes_per_image_uint8_range"] == size / len(images)
    assert torch.equal(
        codec.unpack(model, model_file, ranged.read_bytes())[1], codec.unpack(model, model_file, stream.read_bytes())[1]
    )
    # what the report makes of them (its figures aside: test_report_compares_every_variant_...)
    means = report_text.variant_means(
        report_text.results_table(
            {f"{v}-seed0": schema.load(paths.metrics_file(f"{v}-seed0")) for v in ("tinyA", "tinyB")}
        )
    )
    settings = {row["setting"] for row in rate_distortion.model_rows(means)}
    assert {
        "float32, refined ≤3 steps, 8 dims",
        "uint8, refined ≤3 steps, 8 dims",
        "uint8 range-coded, refined ≤3 steps, 8 dims",
        "uint8, 4 dims",
    } <= settings
    one_pass, refined = rate_distortion.quality_target_findings(means, budget_flops=plain["train_flops_per_image"])
    assert "in one encoder pass" in one_pass and "with the codec's encode-time latent refinement" in refined


@pytest.mark.parametrize(
    "missing, message",
    [
        ("model", r"tinyA-seed0\.pt: missing; run the train stage first"),
        ("classifier", r"classifier\.pt: missing; run the classifier stage"),
    ],
)
def test_missing_input_is_a_clear_error(workspace, missing, message):
    (model_path() if missing == "model" else paths.classifier_file()).unlink()
    with pytest.raises(DataError, match=message):
        run_evaluate(workspace, "tinyA")
    assert not paths.metrics_file("tinyA-seed0").exists()


def test_stage_cli_prints_the_result_or_one_error_line(workspace, capsys):
    assert evaluate_stage.main(["tinyA", "--seed", "0"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("evaluate: tinyA-seed0: MSE ")
    for network_pass in ("autoencoder", "encoder", "decoder", "uint8 stream"):  # a progress bar for each
        assert f"evaluate: {network_pass}: " in printed.err
    assert paths.metrics_file("tinyA-seed0").exists()
    model_path().unlink()
    assert evaluate_stage.main(["tinyA", "--seed", "0"]) == 1
    assert capsys.readouterr().err == f"evaluate: error: {model_path()}: missing; {MISSING_MODEL}\n"
    assert evaluate_stage.main(["nope", "--seed", "0"]) == 1
    assert "evaluate: error: variants.nope: no such variant" in capsys.readouterr().err


def test_a_model_that_decodes_every_image_to_the_same_one_is_collapsed():
    same = torch.full((5, 1, 28, 28), 0.3)
    assert output_spread(same) == {"output_range": 0.0, "collapsed": True}
    varied = same.clone()
    varied[2, 0, 13, 7] += 2 * COLLAPSED_RANGE  # one pixel of one image is enough to tell images apart
    assert output_spread(varied)["output_range"] == pytest.approx(2 * COLLAPSED_RANGE, rel=1e-5)  # float32
    assert output_spread(varied)["collapsed"] is False
    assert output_spread(same[:1])["collapsed"] is False  # one image has no range to judge by


def test_dead_latent_units_of_a_constructed_model_are_counted():
    model = build_model(VariantSpec(**{**TINY_SPEC, "latent_activation": "relu"})).eval()
    latent_layer = model.encoder[-2]
    with torch.no_grad():
        latent_layer.bias[:3] = -1e6  # these three ReLU units can never fire
        latent_layer.bias[3:] = 1e3  # and these always do
        latents = model.encode(torch.rand(64, 1, 28, 28))
    diagnostics = latent_diagnostics(latents)
    assert diagnostics["dead_latent_units"] == 3
    assert diagnostics["latent_units"]["dead"] == [True] * 3 + [False] * 5
    assert diagnostics["active_latent_units_per_image"] == 5.0


def test_effective_dims_count_the_directions_holding_99_percent_of_variance():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 6, generator=generator))[0]
    scales = torch.tensor([10.0, 5.0, 3.0, 0.0, 0.0, 0.0])  # variance shares .75, .93, 1
    latents = (torch.randn(5000, 6, generator=generator) * scales) @ basis.T
    assert latent_diagnostics(latents)["effective_latent_dims"] == 3
    assert latent_diagnostics(torch.zeros(10, 4))["effective_latent_dims"] == 0


def test_a_workspace_keeps_its_artifacts_in_its_own_copy_of_the_store(workspace):
    """The session's project is shared: a test's logged artifacts must not land where another test reads them."""
    run_id = run_evaluate(workspace, "tinyA", tracking.MlflowTracker())["run"]["mlflow_run_id"]
    store = Path(workspace["uri"].removeprefix("sqlite:///")).parent
    assert client(workspace).get_run(run_id).info.artifact_uri.removeprefix("file://").startswith(str(store))
