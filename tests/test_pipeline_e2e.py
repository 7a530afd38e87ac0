"""End to end: the real `dvc exp run` / `dvc repro` on a tiny generated dataset, in a temporary copy of the repo:
the outputs, the MLflow runs, determinism, and which stages an edit to params or code makes stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.lib import figures, schema
from tests.conftest import TINY_SPEC as TINY
from tests.conftest import make_project, run
from tests.fakedata import make_emnist_dir

RUNS = ["tiny1-seed0", "tiny1-seed1", "tiny2-seed0", "tiny2-seed1"]
TRAIN = {"train@tiny1-0", "train@tiny1-1", "train@tiny2-0", "train@tiny2-1"}
EVALUATE = {stage.replace("train@", "evaluate@") for stage in TRAIN}
EXPERIMENT = "tiny-e2e"  # MLflow's experiment is MLflow's own setting, not a param

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """A git+DVC copy of the repo with two tiny variants (tiny2 entropy-coded) x two seeds, after one
    `dvc exp run` on generated data; every stage logs into the MLflow experiment named by MLFLOW_EXPERIMENT_NAME."""
    variants = {"tiny1": TINY, "tiny2": {**TINY, "latent_dim": 4, "rate_weight": 0.01}}
    root, env = make_project(tmp_path_factory.mktemp("project"), variants, seeds=(0, 1))
    env = {**env, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    data_dir = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    run(["dvc", "exp", "run", "--set-param", f"data.source={data_dir}"], root, env)
    return root, env


def test_pipeline_produces_every_output(project):
    root, _ = project
    for name in RUNS:
        assert (root / "models" / f"{name}.pt").exists()
        metrics = json.loads((root / "reports" / "metrics" / f"{name}.json").read_text())
        assert schema.REQUIRED.keys() <= metrics.keys()
        assert len(metrics["per_class"]) == 47
        assert metrics["max_abs_diff_decoder"] < 1e-6
        assert metrics["n_test"] == 94
        assert f"{metrics['variant']}-seed{metrics['seed']}" == name
    report = (root / "reports" / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Mean ± std over seeds")
    assert all(name in report for name in RUNS)
    assert sorted(p.stem for p in (root / "reports" / "figures").glob("*.png")) == sorted(figures.REPORT_FIGURES)
    assert "## Training recipe" in report and "Data: " in report  # what the runs trained with, and on which data
    assert (
        "## Rate–distortion" in report and "- Moonshot (≤ 32 B/image at pooled PSNR ≥ 27.1 dB, the reference" in report
    )
    assert "; here WebP quality 5 measures" in report  # the baselines stage's own figure beside the study's


def test_rate_distortion_json_has_variant_forms_and_baselines(project):
    root, _ = project
    rows = json.loads((root / "reports" / "rate_distortion.json").read_text())
    assert all({"method", "setting", "bytes_per_image", "psnr_pooled", "psnr", "ssim"} <= r.keys() for r in rows)
    forms = {(r["method"], r["setting"].split(",")[0]) for r in rows}
    assert {("tiny1", "float32"), ("tiny1", "uint8"), ("tiny2", "uint8"), ("tiny2", "entropy-coded")} <= forms
    assert {"pca", "pca-uint8", "jpeg", "webp", "png", "gzip"} <= {r["method"] for r in rows}
    classifier = json.loads((root / "reports" / "classifier.json").read_text())
    assert 0 <= classifier["test_accuracy"] <= 1


def test_seeds_train_different_models(project):
    root, _ = project
    first, second = (torch.load(root / "models" / f"tiny1-seed{s}.pt", weights_only=False) for s in (0, 1))
    assert (first["seed"], second["seed"]) == (0, 1)
    assert not torch.equal(first["state_dict"]["encoder.0.weight"], second["state_dict"]["encoder.0.weight"])


def test_data_source_is_a_dvc_parameter(project):
    root, _ = project
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    source = lock["stages"]["prepare"]["params"]["params.yaml"]["data"]["source"]
    assert source.endswith("emnist") and Path(source).is_absolute()


def test_runs_land_in_the_root_sqlite_store(project):
    root, env = project
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(["report", "classifier", *RUNS])
    report_run = next(r for r in runs if r.info.run_name == "report")
    assert "tiny1.mse_mean" in report_run.data.metrics
    for variant_run in runs:
        if variant_run.info.run_name in RUNS:
            assert variant_run.data.tags["mlflow.parentRunId"] == report_run.info.run_id
            assert {"test_ssim", "val_loss"} <= variant_run.data.metrics.keys()
            assert variant_run.data.tags["seed"] == variant_run.info.run_name[-1]


def _snapshot(root: Path, names: list[str]) -> dict:
    """State-dict tensors and metrics (without the documented non-deterministic 'run' block) per run."""
    snap = {}
    for name in names:
        saved = torch.load(root / "models" / f"{name}.pt", weights_only=False)
        metrics = json.loads((root / "reports" / "metrics" / f"{name}.json").read_text())
        metrics.pop("run")
        snap[name] = (saved["state_dict"], metrics)
    return snap


def test_forced_rerun_is_bit_identical(project):
    # one seed of each variant kind (plain and entropy-coded) is enough: about a third of a full rerun's time
    root, env = project
    names = ["tiny1-seed0", "tiny2-seed0"]
    before = _snapshot(root, names)
    stages = [f"{kind}@{name.replace('-seed', '-')}" for name in names for kind in ("train", "evaluate")]
    # report too: the rerun rewrites the metrics' 'run' block, which report reads, and later tests expect a clean status
    run(["dvc", "repro", "--force", "--single-item", *stages, "report"], root, env)
    after = _snapshot(root, names)
    for name, (weights, metrics) in before.items():
        new_weights, new_metrics = after[name]
        assert weights.keys() == new_weights.keys()
        assert all(torch.equal(weights[k], new_weights[k]) for k in weights), name
        assert metrics == new_metrics, name


def _status(root: Path, env: dict) -> dict:
    return json.loads(run(["dvc", "status", "--json"], root, env))


def _status_after_editing(root: Path, env: dict, edit) -> set[str]:
    params_file = root / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    edit(params)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        return set(_status(root, env))
    finally:
        params_file.write_text(original)


def _status_after_touching(root: Path, env: dict, source: str) -> dict:
    """`dvc status --json` with a comment appended to one source file (restored afterwards)."""
    path = root / source
    original = path.read_text()
    path.write_text(original + "\n# touched by a test\n")
    try:
        return _status(root, env)
    finally:
        path.write_text(original)


def test_editing_one_variant_reruns_only_its_branches(project):
    root, env = project
    assert _status(root, env) == {}
    changed = _status_after_editing(root, env, lambda p: p["variants"]["tiny2"].update(latent_dim=6))
    # its two seeds' train and evaluate stages, and the report that reads every variant's spec
    assert changed == {"train@tiny2-0", "train@tiny2-1", "evaluate@tiny2-0", "evaluate@tiny2-1", "report"}


def test_changing_one_seed_adds_only_that_branch(project):
    root, env = project
    changed = _status_after_editing(root, env, lambda p: p.update(seeds=[0, 5]))
    assert {s for s in changed if not s.startswith("report")} == {
        "train@tiny1-5",
        "train@tiny2-5",
        "evaluate@tiny1-5",
        "evaluate@tiny2-5",
    }


def test_stage_edits_rerun_exactly_their_stages(project):
    """`dvc status` lists the stages whose own deps or params changed (their downstream follows on `dvc repro`)."""
    root, env = project
    assert _status(root, env) == {}
    # (a) a tool no stage imports: nothing to rerun
    assert _status_after_touching(root, env, "pipeline/tools/lineage.py") == {}
    # (b) the download code: prepare only, and no train stage directly
    status = _status_after_touching(root, env, "pipeline/lib/download.py")
    assert set(status) == {"prepare"}, status
    assert status["prepare"] == [{"changed deps": {"pipeline/lib/download.py": "modified"}}]
    # (c) the report's text: report only
    status = _status_after_touching(root, env, "pipeline/lib/report_text.py")
    assert set(status) == {"report"}, status
    # (d) a training hyperparameter: every train stage, and the report, whose recipe table prints it
    lr = yaml.safe_load((root / "params.yaml").read_text())["train"]["lr"]
    assert _status_after_editing(root, env, lambda p: p["train"].update(lr=lr / 2)) == TRAIN | {"report"}
    # (d') one that is not in a recipe (where and how a run computes): every train stage, nothing else
    assert _status_after_editing(root, env, lambda p: p["train"].update(channels_last=False)) == TRAIN
    # (e) the codec's encoder-side search: every evaluate stage, no train stage
    assert (
        _status_after_editing(root, env, lambda p: p["codec"].update(refine_steps=p["codec"]["refine_steps"] + 3))
        == EVALUATE
    )
    # (f) renaming the MLflow experiment: not a param, nothing to rerun
    assert "experiment" not in yaml.safe_load((root / "params.yaml").read_text())["mlflow"]
    assert _status(root, {**env, "MLFLOW_EXPERIMENT_NAME": f"{EXPERIMENT}-renamed"}) == {}
    assert _status(root, env) == {}  # every edit was restored
