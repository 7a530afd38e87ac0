"""The metrics JSON evaluate writes (its documented keys and its schema) and the report stage that reads it, on
the tiny trained project of tests/evaluate_support.py."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pipeline import paths, tracking
from pipeline.lib import report_text, schema
from pipeline.lib.figures import REPORT_FIGURES
from pipeline.lib.io import DataError
from pipeline.lib.models import COLLAPSED_RANGE
from pipeline.stages import report as report_stage
from tests.evaluate_support import client, run_evaluate


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


def test_report_compares_every_variant_and_groups_their_runs_under_a_report_run(workspace):
    tracker = tracking.MlflowTracker()
    ids = [run_evaluate(workspace, v, tracker)["run"]["mlflow_run_id"] for v in ("tinyA", "tinyB")]
    path, figures, results, summary = report_stage.write_report(workspace["params"])
    text = path.read_text()
    best = results.set_index("variant").mse.idxmin()
    assert path == paths.reports_dir() / "report.md"
    assert text.startswith("# CompressNet report\n\nData: ") and "\n\n## Findings\n\n- Lowest" in text
    assert f"Lowest mean test MSE over 1 seed: **{best}**" in text
    assert "no difference can be told from seed-to-seed luck" in text
    assert "No pair can be tested: each variant needs two or more seeds" in text  # not a table of "False"
    assert list(summary.index) == ["tinyA", "tinyB"] and list(summary.n) == [1, 1]
    assert all(f.parent == paths.figures_dir() and f.exists() and f.stat().st_size > 5000 for f in figures)
    assert all(f"![{f.stem}](figures/{f.name})\n\n{REPORT_FIGURES[f.stem]}\n" in text for f in figures)
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


def test_the_report_hands_its_collapsed_runs_and_its_columns_ceilings_to_the_findings(workspace, monkeypatch):
    for variant in ("tinyA", "tinyB"):
        run_evaluate(workspace, variant)
    metrics_file = paths.metrics_file("tinyB-seed0")
    metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), "collapsed": True}))
    seen, findings, aggregate = {}, report_text.findings, report_stage.stats.aggregate
    monkeypatch.setattr(report_text, "findings", lambda *args: seen.update(collapsed=args[4]) or findings(*args))
    monkeypatch.setattr(
        report_stage.stats, "aggregate", lambda *args: seen.update(ceilings=args[3]) or aggregate(*args)
    )
    path, *_ = report_stage.write_report(workspace["params"])
    assert seen == {"collapsed": frozenset({"tinyB"}), "ceilings": report_text.SEED_CEILINGS}
    assert "- Collapsed (every test image decodes to the same image): tinyB seed 0" in path.read_text()
