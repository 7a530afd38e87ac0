"""The evaluate stage (pipeline.lib.evaluation + pipeline.stages.evaluate), the metrics JSON schema and the report
stage, on tiny models trained once for the module and generated data, in a project laid out under a tmp
COMPRESSNET_ROOT with its own MLflow store."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import mlflow.tracking._tracking_service.utils as mlflow_uri
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from skimage.metrics import structural_similarity

from pipeline import paths, tracking
from pipeline.lib import classifier, codec, rate_distortion, report_text, schema
from pipeline.lib.config import CodecConfig, VariantSpec, parse_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.evaluation import evaluate_model, final_losses, latent_diagnostics, output_spread
from pipeline.lib.io import DataError
from pipeline.lib.losses import OBJECTIVES
from pipeline.lib.models import COLLAPSED_RANGE, MISSING_MODEL, build_model, load_model, training_flops_per_image
from pipeline.stages import baselines as baselines_stage
from pipeline.stages import classifier as classifier_stage
from pipeline.stages import evaluate as evaluate_stage
from pipeline.stages import report as report_stage
from pipeline.stages import train as train_stage
from pipeline.tools import codec as codec_tool
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir, write_idx

RAW_PARAMS = {
    "train": {"epochs": 1, "batch_size": 64, "threads": 1},
    "classifier": {"epochs": 5, "batch_size": 32},  # enough to classify the fake glyphs
    "rate_distortion": {"jpeg_qualities": [5], "webp_qualities": [5], "pca_dims": [4]},  # the report needs a few
    "mlflow": {"log_model": False},
    "variants": {"tinyA": TINY_SPEC, "tinyB": {**TINY_SPEC, "latent_dim": 4, "rate_weight": 0.01}},
}
LAYOUT = ("data", "models", "reports")  # what the module's project holds besides its store


@pytest.fixture(autouse=True)
def process_wide_tracking_uri(monkeypatch):
    """MlflowTracker points mlflow's process-wide tracking URI at the test's store: put it back afterwards."""
    monkeypatch.setattr(mlflow_uri, "_tracking_uri", None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A project with prepared data, two tiny variants trained with MLflow tracking, the classifier and the
    baselines, made once for the module by the stage functions (the store: <base>/mlruns/mlflow.db)."""
    base = tmp_path_factory.mktemp("trained")
    root, store = base / "project", base / "mlruns"
    root.mkdir(), store.mkdir()
    emnist = make_emnist_dir(base / "emnist")
    raw = {"data": {"source": str(emnist)}, **RAW_PARAMS}
    params = parse_params(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPRESSNET_ROOT", str(root))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        patch.setattr(mlflow_uri, "_tracking_uri", None)
        prepare_from_directory(params.data, emnist, paths.prepared_dir())
        tracker = tracking.MlflowTracker()
        for variant in params.variants:
            train_stage.train(params, variant, 0, tracker)
        classifier_stage.train_classifier(params, tracker)
        baselines_stage.write_baselines(params)
    return {"root": root, "store": store, "params": params, "raw": raw}


@pytest.fixture
def workspace(trained, project_root: Path, tmp_path: Path, monkeypatch) -> dict:
    """A private copy of the module's project (tests may delete or rewrite files) and of its tracking store."""
    for name in LAYOUT:
        shutil.copytree(trained["root"] / name, project_root / name)
    (project_root / "params.yaml").write_text(yaml.safe_dump(trained["raw"], sort_keys=False))
    store = Path(shutil.copytree(trained["store"], tmp_path / "mlruns"))
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_ROOT", raising=False)  # not run by DVC: provenance is "unknown"
    return {"params": trained["params"], "root": project_root, "uri": uri}


def run_evaluate(ws: dict, variant: str, tracker=None) -> dict:
    return evaluate_stage.evaluate(ws["params"], variant, 0, tracker or tracking.NoOpTracker())


def client(ws: dict) -> MlflowClient:
    return MlflowClient(tracking_uri=ws["uri"])


def model_path(variant: str = "tinyA") -> Path:
    return paths.model_file(f"{variant}-seed0")


def test_metrics_json_has_the_documented_keys(workspace):
    result = run_evaluate(workspace, "tinyA")
    written = json.loads(paths.metrics_file("tinyA-seed0").read_text())
    assert schema.REQUIRED.keys() <= written.keys()
    assert written["n_test"] == 94 and written["latent_dim"] == 8
    assert written["bytes_per_image_float32"] == 32 and written["compression_ratio_float32"] == 784 / 32
    assert len(written["per_class"]) == 47 and {"char", "mse", "psnr", "ssim"} <= written["per_class"][0].keys()
    assert written["max_abs_diff_decoder"] == 0.0
    assert written["collapsed"] is (written["output_range"] < COLLAPSED_RANGE)
    assert written["mse_decoder"] == written["mse"]
    assert written["refine_steps"] == 0 and "mse_refined" not in written  # the default: the encoder's single pass
    assert written["seed_protocol"]["indices"] == result["seed_protocol"]["indices"]
    cfg = workspace["params"].evaluate
    assert len(written["seed_protocol"]["indices"]) == cfg.protocol_images
    assert {"mse", "psnr", "ssim", "mse_decoder"} <= written["seed_protocol"].keys()
    assert written["run"]["mlflow_run_id"] is None  # NoOpTracker: nothing tracked
    assert paths.per_class_file("tinyA-seed0").read_text().startswith("label,char,mse,psnr,ssim,n\n")
    assert np.load(paths.samples_file("tinyA-seed0")).shape == (cfg.grid_images, 28, 28)
    assert (
        written["sample_indices"] == sorted(set(written["sample_indices"]))
        and len(written["sample_indices"]) == cfg.grid_images
    )


def test_metrics_json_follows_the_schema(workspace):
    run_evaluate(workspace, "tinyA")
    run_evaluate(workspace, "tinyB")  # entropy-coded: the optional keys of its stream too
    for variant in ("tinyA", "tinyB"):
        path = paths.metrics_file(f"{variant}-seed0")
        written = json.loads(path.read_text())
        assert schema.check(written, str(path)) == written
        assert schema.load(path) == written
    assert {"bytes_per_image_entropy", "prior_bits_per_image"} <= written.keys()


def _metrics(ws: dict) -> dict:
    run_evaluate(ws, "tinyA")
    return json.loads(paths.metrics_file("tinyA-seed0").read_text())


@pytest.mark.parametrize("key", ["ssim", "per_class", "run.model_sha256"])
def test_schema_rejects_a_missing_required_key_naming_it(workspace, key):
    metrics = _metrics(workspace)
    *block, leaf = key.split(".")
    del (metrics[block[0]] if block else metrics)[leaf]
    with pytest.raises(DataError, match=rf"^m\.json: no key {key}; rerun its evaluate stage$"):
        schema.check(metrics, "m.json")


@pytest.mark.parametrize(
    "key, value",
    [
        ("n_test", "94"),
        ("seed", True),
        ("ssim", None),
        ("latent_units", []),
        ("bytes_per_image_entropy", "9.5"),
        ("collapsed", 0),
        ("output_range", False),
        ("run.eval_seconds", "fast"),
    ],
)
def test_schema_rejects_a_wrong_type_naming_the_key(workspace, key, value):
    metrics = _metrics(workspace)
    *block, leaf = key.split(".")
    (metrics[block[0]] if block else metrics)[leaf] = value
    with pytest.raises(DataError, match=rf"^m\.json: {key}: expected .*, got {re.escape(repr(value))}$"):
        schema.check(metrics, "m.json")
    with pytest.raises(DataError, match=rf"metrics: {key}: expected"):  # evaluate never writes such a file
        schema.dumps(metrics)


def test_schema_rejects_an_unknown_key(workspace):
    metrics = {**_metrics(workspace), "mse_typo": 0.1}
    with pytest.raises(DataError, match="m.json: unknown key mse_typo"):
        schema.check(metrics, "m.json")


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


def test_ssim_matches_scikit_image_on_the_reconstructions(workspace):
    result = run_evaluate(workspace, "tinyA")
    model, _ = load_model(model_path(), torch.device("cpu"))
    images = np.load(paths.prepared_dir() / "test_images.npy").astype(np.float64) / 255
    with torch.no_grad():
        recon = model(torch.from_numpy(images).float().unsqueeze(1)).squeeze(1).double().numpy()
    expected = np.mean([structural_similarity(a, b, data_range=1.0, win_size=11) for a, b in zip(images, recon)])
    assert result["ssim"] == pytest.approx(expected, abs=1e-5)  # model output is float32


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


def test_report_compares_every_variant_and_groups_their_runs_under_a_report_run(workspace):
    tracker = tracking.MlflowTracker()
    ids = [run_evaluate(workspace, v, tracker)["run"]["mlflow_run_id"] for v in ("tinyA", "tinyB")]
    path, figures, results, summary = report_stage.write_report(workspace["params"])
    text = path.read_text()
    best = results.set_index("variant").mse.idxmin()
    assert path == paths.reports_dir() / "report.md"
    assert text.startswith("# CompressNet report\n\n## Findings")
    assert f"Best variant by mean test MSE over 1 seed(s): **{best}**" in text
    assert "no difference can be told from seed-to-seed luck" in text
    assert "No pair can be tested: each variant needs two or more seeds" in text  # not a table of "False"
    assert list(summary.index) == ["tinyA", "tinyB"] and list(summary.n) == [1, 1]
    assert all(f.parent == paths.figures_dir() and f.exists() and f.stat().st_size > 5000 for f in figures)
    assert all(f"![{f.stem}](figures/{f.name})" in text for f in figures)
    rd = json.loads((paths.reports_dir() / "rate_distortion.json").read_text())
    assert {"uint8, 8 dims", "entropy-coded, 4 dims", "webp"} <= {row["setting"] for row in rd} | {
        row["method"] for row in rd
    }

    report_stage.log_report(tracker, path, figures, summary, results, seconds=1.5)
    children = [client(workspace).get_run(i) for i in ids]
    parents = {child.data.tags["mlflow.parentRunId"] for child in children}
    assert len(parents) == 1
    assert all(child.data.tags["report.dvc.evaluate_lock_sha256"] == "unknown" for child in children)  # outside DVC
    assert all(child.info.status == "FINISHED" for child in children)  # grouped, not reopened
    parent = client(workspace).get_run(parents.pop())
    assert parent.info.run_name == "report" and parent.info.status == "FINISHED"
    assert parent.data.metrics["tinyA.mse_mean"] == pytest.approx(summary.loc["tinyA", "mse_mean"])
    assert parent.data.metrics["report_seconds"] == 1.5
    artifacts = {a.path for a in client(workspace).list_artifacts(parent.info.run_id)}
    assert {"report.md", "rate_distortion.json", "figures"} <= artifacts


def test_report_needs_every_variant_evaluated(workspace):
    run_evaluate(workspace, "tinyA")
    with pytest.raises(
        DataError,
        match=r"tinyB-seed0\.json: missing; run the evaluate stage first "
        r"\(dvc repro evaluate@tinyB-0\)",
    ):
        report_stage.write_report(workspace["params"])


def test_report_refuses_metrics_that_do_not_follow_the_schema(workspace):
    for variant in ("tinyA", "tinyB"):
        run_evaluate(workspace, variant)
    path = paths.metrics_file("tinyB-seed0")
    broken = json.loads(path.read_text())
    del broken["ssim"]
    path.write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"tinyB-seed0\.json: no key ssim"):
        report_stage.write_report(workspace["params"])


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
