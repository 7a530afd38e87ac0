"""The plan `make repro` prints before it starts (pipeline.tools.plan), and the quick profile it can run instead."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from dvc.lock import LockError
from hydra.core.override_parser.overrides_parser import OverridesParser

from pipeline import paths
from pipeline.lib.config import ConfigError, Params, parse_params
from pipeline.lib.io import DataError
from pipeline.lib.keras_weights import study_files
from pipeline.tools import plan, plan_downloads, plan_probe
from pipeline.tools.child_path import path_with_this_python
from tests.conftest import REPO, TINY_SPEC, make_project, run
from tests.fakedata import make_emnist_dir

QUICK = yaml.safe_load((REPO / "pipeline" / "quick.yaml").read_text())


def committed_params() -> dict:
    """params.yaml as committed: a `make repro-quick` before the tests leaves the quick profile's values in it."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True)
    return yaml.safe_load(shown.stdout if shown.returncode == 0 else (REPO / "params.yaml").read_text())


REPO_PARAMS = committed_params()


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-S", "trian.lr=0.1"], "plan: error: trian.lr: params.yaml has no section trian"),
        (["-S", "train.lr=-1"], "plan: error: train.lr"),
        (["--profile", "nowhere.yaml"], "plan: error: nowhere.yaml: No such file or directory"),
        (["-S", "data.source=/nowhere"], "plan: error: data.source /nowhere: no such directory (make repro DATA="),
        (["-S", "study.source=/nowhere"], "plan: error: study.source /nowhere: no such directory (make repro STUDY="),
    ],
)
def test_bad_params_or_a_missing_profile_are_one_line_not_a_traceback(args, message, project_root, capsys):
    data = {**REPO_PARAMS["data"], "source": str(project_root)}  # a directory that is there
    (project_root / "params.yaml").write_text(yaml.safe_dump({**REPO_PARAMS, "data": data}))
    assert plan.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_a_mapping_in_a_profile_is_refused():
    with pytest.raises(ValueError, match="not {'a': 1}"):
        plan.hydra_value({"a": 1})


def test_set_values_are_read_as_dvc_exp_run_reads_them():
    sets = ["train.lr=1e-3", "seeds=[0,1]", "data.source=../shared/data", "study.models=[]", "mlflow.log_model=false"]
    assert plan.parse_sets(sets) == {
        "train.lr": 0.001,  # YAML would read the string "1e-3"
        "seeds": [0, 1],
        "data.source": "../shared/data",
        "study.models": [],
        "mlflow.log_model": False,
    }
    with pytest.raises(ConfigError, match="-S takes key=value as `dvc exp run -S` does"):
        plan.parse_sets(["train.lr"])
    with pytest.raises(ConfigError, match=r"-S seeds=0,1: a sweep; the plan takes one value per key"):
        plan.parse_sets(["seeds=0,1"])


def test_a_mapping_in_a_profile_is_refused_before_the_probe(project_root, tmp_path, capsys, monkeypatch):
    (project_root / "params.yaml").write_text(yaml.safe_dump({**REPO_PARAMS, "data": {"source": str(tmp_path)}}))
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"train": {"lr": 0.1}}))  # a section, not a dotted key
    monkeypatch.setattr(plan, "plan_lines", lambda *args, **kwargs: pytest.fail("probed first"))
    assert plan.main(["--profile", str(profile)]) == 1
    assert "plan: error: a profile value must be a number, string, boolean, null or list" in capsys.readouterr().err


def test_dvcs_lock_held_elsewhere_is_one_line(project_root, tmp_path, capsys, monkeypatch):
    (project_root / "params.yaml").write_text(yaml.safe_dump({**REPO_PARAMS, "data": {"source": str(tmp_path)}}))

    def locked(*args, **kwargs):
        raise LockError("Unable to acquire lock. Most likely another DVC process is running")

    monkeypatch.setattr(plan, "plan_lines", locked)
    assert plan.main([]) == 1
    assert (
        capsys.readouterr().err == "plan: error: Unable to acquire lock. Most likely another DVC process is running\n"
    )


def test_before_prepare_the_splits_are_counted_in_the_sources_label_files(project_root, tmp_path):
    source = make_emnist_dir(tmp_path / "emnist")
    sizes = plan.split_sizes(parse_params({**REPO_PARAMS, "data": {**REPO_PARAMS["data"], "source": str(source)}}))
    train = sizes["train"] + sizes["val"]
    assert (train, sizes["test"]) == plan.source_sizes(source) and train < plan.BALANCED["train"]
    assert sizes["val"] == round(train * REPO_PARAMS["data"]["val_fraction"])
    assert plan.source_sizes(REPO / "pipeline" / "emnist_balanced.sha256") == tuple(plan.BALANCED.values())


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


def test_the_plan_says_when_the_study_stages_will_download_and_how_to_do_without(project_root):
    """Offline, the download would fail only when the study stages run: said before the hours of training."""
    params = parse_params({**REPO_PARAMS, "study": {**REPO_PARAMS["study"], "models": ["model01"]}})
    [line] = plan_downloads.download_lines(params, ["study@model01"])
    assert "model01" in line and params.study.url in line and "add STUDY=" in line
    paths.study_raw_dir().mkdir(parents=True)
    for name in study_files("model01"):
        (paths.study_raw_dir() / name).write_bytes(b"downloaded before")
    assert plan_downloads.download_lines(params, ["study@model01"]) == [line], "not the pinned files: fetched again"
    pinned = project_root / "pinned.sha256"
    pinned.write_text(
        "".join(f"{hashlib.sha256(b'downloaded before').hexdigest()}  {n}\n" for n in study_files("model01"))
    )
    verified = parse_params({**REPO_PARAMS, "study": {**REPO_PARAMS["study"], "checksums": str(pinned)}})
    assert plan_downloads.download_lines(verified, ["study@model01"]) == []
    local = parse_params({**REPO_PARAMS, "study": {**REPO_PARAMS["study"], "source": str(project_root)}})
    assert plan_downloads.download_lines(local, ["study@model02"]) == []


def emnist_listing(project_root: Path, text: str) -> Params:
    listing = project_root / "official.sha256"
    listing.write_text(text)
    return parse_params({**REPO_PARAMS, "data": {**REPO_PARAMS["data"], "source": str(listing)}})


def test_the_plan_says_when_prepare_will_download_emnist_and_how_to_do_without(project_root):
    params = emnist_listing(project_root, f"{hashlib.sha256(b'kept').hexdigest()}  emnist-balanced-test-labels.gz\n")
    [line] = plan_downloads.download_lines(params, ["prepare", "train@model01-0"])
    assert params.data.url in line and "560 MB" in line and "add DATA=" in line
    assert plan_downloads.download_lines(params, ["train@model01-0"]) == [], "prepared already: nothing to download"
    kept = paths.raw_dir() / plan_downloads.KEPT_DIR
    kept.mkdir(parents=True)
    (kept / "emnist-balanced-test-labels.gz").write_bytes(b"not the pinned file")
    assert plan_downloads.download_lines(params, ["prepare"]) == [line], "not the pinned file: downloaded again"
    (kept / "emnist-balanced-test-labels.gz").write_bytes(b"kept")
    assert plan_downloads.download_lines(params, ["prepare"]) == [], "its verified files are kept: no download"
    local = parse_params({**REPO_PARAMS, "data": {**REPO_PARAMS["data"], "source": str(project_root)}})
    assert plan_downloads.download_lines(local, ["prepare"]) == []


def test_an_archive_downloaded_before_is_only_extracted_and_a_bad_listing_is_said_before_any_stage(project_root):
    params = emnist_listing(project_root, f"{hashlib.sha256(b'kept').hexdigest()}  emnist-balanced-test-labels.gz\n")
    paths.raw_dir().mkdir(parents=True)
    (paths.raw_dir() / plan_downloads.ARCHIVE).write_bytes(b"a whole archive")
    assert plan_downloads.download_lines(params, ["prepare"]) == []
    not_a_listing = emnist_listing(project_root, "EMNIST, balanced\n")
    with pytest.raises(DataError, match=r"^data.source .*official.sha256: not a listing of the official files"):
        plan_downloads.download_lines(not_a_listing, ["prepare"])


def tiny_params(**train) -> Params:
    return parse_params({"variants": {"tiny": TINY_SPEC}, "train": {"device": "cpu", "threads": 1, **train}})


SIZES = {"train": 470, "val": 50, "test": 94}


def test_the_estimate_adds_up_every_kind_of_work_and_each_stages_start_up(project_root, capsys):
    runs = {"train": [("tiny", 0), ("tiny", 1)], "evaluate": [("tiny", 0)]}
    others = ["prepare", "classifier", "baselines", "report"]
    est = plan_probe.estimate(tiny_params(), SIZES, runs, others, startup=2.5)
    assert min(est.train, est.evaluate, est.other) > 0 and est.stages == 7
    assert est.total == pytest.approx(est.train + est.evaluate + est.other + 7 * 2.5)
    assert list(est.rates) == ["tiny"] and est.rates["tiny"] > 0
    bars = capsys.readouterr().err
    assert "epoch 1/" not in bars and "evaluate: " not in bars  # the probe's timed passes show no progress bar
    without = plan_probe.estimate(tiny_params(), SIZES, {"train": [], "evaluate": []}, ["prepare", "report"], 2.5)
    assert without.other == 0 and without.train == 0 and without.stages == 2


def test_a_schedule_shorter_than_the_probe_still_gets_an_estimate(project_root):
    params = tiny_params(epochs=1, steps_per_epoch=1, schedule="onecycle")
    assert plan_probe.estimate(params, SIZES, {"train": [("tiny", 0)], "evaluate": []}, [], 0.0).train > 0


def test_the_parallel_option_says_whether_its_stages_would_split_the_same_cores():
    assert "sharing the GPU" in plan.parallel_line("cuda", 2, 0)
    for threads in (0, 2, 4):  # every core, or more threads than cores
        every_core = plan.parallel_line("cpu", 2, threads)
        assert "JOBS=N" in every_core and "the 2 CPU cores here" in every_core and "split" in every_core
    assert "the 1 CPU core here" in plan.parallel_line("cpu", 1, 0)
    some_cores = plan.parallel_line("cpu", 8, 2)
    assert "2 of the 8 CPU cores" in some_cores and "split" not in some_cores


def test_the_start_up_is_this_process_age():
    assert 0 < plan_probe.startup_seconds() < time.time() - psutil.boot_time()


def test_current_value_reads_dotted_keys_and_says_when_there_is_none():
    raw = {"train": {"epochs": 15}}
    assert plan.current_value(raw, "train.epochs") == 15 and plan.current_value(raw, "train") == {"epochs": 15}
    assert plan.current_value(raw, "nope.x") is plan.MISSING
    assert plan.current_value(raw, "train.epochs.x") is plan.MISSING


def test_without_a_profile_the_plan_counts_what_dvc_finds_out_of_date(tmp_path):
    root, env = make_project(tmp_path, {"tiny": TINY_SPEC}, epochs=1, seeds=(0, 1))
    cmd = [sys.executable, "-m", "pipeline.tools.plan"]
    result = subprocess.run(cmd, cwd=root, env={**env, "COMPRESSNET_ROOT": str(root)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "plan: 2 run(s) to train, 2 to evaluate" in result.stdout
    assert "make repro-quick" in result.stdout
    assert "4 other stage(s): prepare, classifier, baselines, report" in result.stdout  # no study@: models []
    assert re.search(r"plan: about .* one stage at a time: .* of start-up \(8 × \d+ s\)", result.stdout)


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
    plan_cmd = [sys.executable, "-m", "pipeline.tools.plan"]
    assert "nothing to run: every stage is up to date" in run(plan_cmd, root, env)
    again = run([*cmd, "--set-param", f"data.source={data}"], root, env)  # the same experiment once more
    assert "no experiment is started" in again and "Ran experiment" not in again
    jpeg_only = run([*plan_cmd, "-S", "rate_distortion.jpeg_qualities=[10]"], root, env)  # baselines' params only
    assert "plan: 0 run(s) to train, 0 to evaluate, and 2 other stage(s): baselines, report" in jpeg_only
    other = make_emnist_dir(tmp_path / "other", seed=1)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**params, "data": {**params["data"], "source": str(other)}}))
    replanned = run(plan_cmd, root, env)  # only prepare's input changed
    assert "plan: 2 run(s) to train, 2 to evaluate" in replanned  # and everything downstream of it follows


def test_a_child_finds_this_environments_dvc_and_python_first_even_when_it_is_not_activated(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    first, *rest = path_with_this_python().split(os.pathsep)
    assert (Path(first) / "dvc").exists() and Path(first) == Path(sys.executable).parent and rest == ["/usr/bin"]


def test_params_edited_since_the_commit_are_noticed_and_outside_git_nothing_is(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    assert not plan.params_edited(tmp_path)  # not a git checkout
    git("init", "-q")
    (tmp_path / "params.yaml").write_text("seeds: [0, 1, 2]\n")
    git("add", "params.yaml")
    git("commit", "-q", "-m", "params")
    assert not plan.params_edited(tmp_path)
    (tmp_path / "params.yaml").write_text("seeds: [0]\n")  # as `make repro-quick` leaves it
    assert plan.params_edited(tmp_path)
    assert "`git checkout params.yaml` returns to the default" in plan.EDITED_PARAMS


def test_the_estimate_counts_every_epoch_of_every_run_at_the_probes_rates(project_root, monkeypatch):
    rates = {"step": 1e-3, "val": 1e-4, "encode": 1e-5, "evaluate": 2e-4}  # seconds per image, as if probed
    monkeypatch.setattr(plan_probe, "variant_seconds", lambda params, variant, device: rates)
    runs = {"train": [("tiny", 0), ("tiny", 1)], "evaluate": [("tiny", 0)]}
    for epochs in (1, 3):
        est = plan_probe.estimate(tiny_params(epochs=epochs), SIZES, runs, [], startup=0.0)
        one_run = epochs * (SIZES["train"] * 1e-3 + SIZES["val"] * 1e-4) + SIZES["train"] * 1e-5  # + calibration
        assert est.train == pytest.approx(2 * one_run) and est.evaluate == pytest.approx(SIZES["test"] * 2e-4)
