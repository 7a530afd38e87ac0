"""The plan `make repro` prints before it starts (pipeline.tools.plan), and the quick profile it can run instead."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from pipeline.lib.config import parse_params
from pipeline.tools import plan
from tests.conftest import REPO, TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

QUICK = yaml.safe_load((REPO / "pipeline" / "quick.yaml").read_text())
REPO_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def test_a_profile_sets_dotted_keys_and_leaves_the_rest():
    original = copy.deepcopy(REPO_PARAMS)
    raw = plan.with_profile(REPO_PARAMS, {"train.epochs": 7, "seeds": [4]})
    assert raw["train"]["epochs"] == 7 and raw["seeds"] == [4]
    assert raw["train"]["batch_size"] == REPO_PARAMS["train"]["batch_size"]
    assert REPO_PARAMS == original


@pytest.mark.parametrize(
    "value", [[], ["model01", "model01_linear"], 400, 1.0e-3, True, None, "C:\\d", "it's é", "a\\'b", "end\\"]
)
def test_profile_values_reach_dvc_as_they_are(value):
    """dvc exp run -S reads Hydra's override grammar: what the plan passes must parse back to the profile's value."""
    override = OverridesParser.create().parse_override(f"key={plan.hydra_value(value)}")
    assert override.value() == value


def test_a_mapping_in_a_profile_is_refused():
    with pytest.raises(ValueError, match="not {'a': 1}"):
        plan.hydra_value({"a": 1})


def test_the_quick_profile_is_valid_params_and_trains_fewer_runs_than_the_default():
    quick, default = parse_params(plan.with_profile(REPO_PARAMS, QUICK)), parse_params(REPO_PARAMS)
    assert 0 < len(quick.runs()) < len(default.runs())
    assert set(quick.trained()) <= set(default.trained())


def test_the_study_recipe_profile_trains_the_studys_models_with_another_recipe_at_the_same_budget():
    profile = yaml.safe_load((REPO / "pipeline" / "study_recipe.yaml").read_text())
    recipe, default = parse_params(plan.with_profile(REPO_PARAMS, profile)), parse_params(REPO_PARAMS)
    study_models = yaml.safe_load((REPO / "pipeline" / "reference.yaml").read_text())["upsampling_layer"]
    assert sorted(recipe.trained()) == sorted(study_models)
    changed = {key.removeprefix("train.") for key in profile if key.startswith("train.")}
    for model in study_models:
        ours, theirs = recipe.train_for(model), default.train_for(model)
        assert changed and all(getattr(ours, key) == profile[f"train.{key}"] for key in changed)
        assert (ours.epochs, ours.steps_per_epoch, ours.batch_size) == (
            theirs.epochs,
            theirs.steps_per_epoch,
            theirs.batch_size,
        )


def test_the_plan_names_the_runs_an_estimate_and_the_faster_options(project_root, capsys):
    params = parse_params({"variants": {"tiny": TINY_SPEC}, "seeds": [0, 1], "train": {"device": "cpu", "threads": 1}})
    text = "\n".join(plan.plan_lines(params, {"seeds": [0, 1]}, profile=True))
    assert "2 run(s) to train, 2 to evaluate" in text
    assert "images/s measured here" in text and "of training and" in text
    assert "make repro JOBS=N" in text and "make repro-quick" not in text  # a profile is already running
    assert "epoch 1/" not in capsys.readouterr().err  # the probe's steps show no training bar


def test_a_schedule_shorter_than_the_probe_still_gets_an_estimate(project_root):
    train = {"device": "cpu", "threads": 1, "epochs": 1, "steps_per_epoch": 1, "schedule": "onecycle"}
    params = parse_params({"variants": {"tiny": TINY_SPEC}, "train": train})
    assert "of training and" in "\n".join(plan.plan_lines(params, {"seeds": [0]}))


def test_without_a_profile_the_plan_counts_what_dvc_finds_out_of_date(tmp_path):
    root, env = make_project(tmp_path, {"tiny": TINY_SPEC}, epochs=1, seeds=(0, 1))
    cmd = [sys.executable, "-m", "pipeline.tools.plan"]
    result = subprocess.run(cmd, cwd=root, env={**env, "COMPRESSNET_ROOT": str(root)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "plan: 2 run(s) to train, 2 to evaluate" in result.stdout
    assert "make repro-quick" in result.stdout
    assert "4 other stage(s)" in result.stdout  # prepare, classifier, baselines, report (no study@: models [])


@pytest.mark.slow
def test_the_quick_profile_runs_the_whole_pipeline_as_one_experiment(tmp_path):
    data = make_emnist_dir(tmp_path / "emnist")
    (tmp_path / "p").mkdir()
    root, env = make_project(tmp_path / "p", REPO_PARAMS["variants"], epochs=1)
    cmd = [sys.executable, "-m", "pipeline.tools.plan", "--profile", str(REPO / "pipeline" / "quick.yaml"), "--run"]
    output = run([*cmd, "--set-param", f"data.source={data}"], root, env, timeout=1800)
    assert "plan: 2 run(s) to train, 2 to evaluate" in output
    metrics = sorted(p.name for p in (root / "reports" / "metrics").iterdir())
    assert metrics == [f"{variant}-seed0.json" for variant in sorted(QUICK["matrix"])]
    assert (root / "reports" / "report.md").exists()
    assert yaml.safe_load((root / "params.yaml").read_text())["matrix"] == QUICK["matrix"]
    assert "Data and pipelines are up to date." in run(["dvc", "repro"], root, env)
    assert "no run to train or evaluate" in run([sys.executable, "-m", "pipeline.tools.plan"], root, env)
    other = make_emnist_dir(tmp_path / "other", seed=1)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**params, "data": {**params["data"], "source": str(other)}}))
    replanned = run([sys.executable, "-m", "pipeline.tools.plan"], root, env)  # only prepare's input changed
    assert "plan: 2 run(s) to train, 2 to evaluate" in replanned  # and everything downstream of it follows
