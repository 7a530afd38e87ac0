"""Lineage: DVC hashes in the outputs and MLflow runs, and `python -m pipeline.tools.lineage`, on a project whose
stages ran in-process (prepare, train, classifier, evaluate, tracked in the project's own <root>/mlflow.db) with
a hand-made dvc.lock, made once per test session; every test that breaks a link does so in its own copy.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import provenance, tracking
from pipeline.lib import prepared
from pipeline.lib.config import DataConfig, load_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.stages.train import train
from pipeline.tools import lineage, lineage_checks
from tests.fakedata import make_emnist_dir
from tests.lineage_support import EVALUATE, MODEL, RUN, TRAIN, VARIANT, client, saved_model

pytestmark = pytest.mark.usefixtures("isolated_store")


def problems(root: Path, target: str = RUN) -> list[str]:
    return lineage.lineage(target, root)[1]


def kinds(lines: list[str]) -> set[str]:
    """'tiny-seed0: data changed: ...' -> 'data changed'."""
    return {line.split(": ")[1] for line in lines}


def edit_params(root: Path, key: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    *path, last = key.split(".")
    section = params
    for part in path:
        section = section[part]
    section[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# ---------------------------------------------------------------- provenance outside DVC


def test_outside_dvc_provenance_is_unknown(tmp_path, monkeypatch):
    inputs, stages = {"prepared": tmp_path / "data" / "prepared"}, {"prepare": "prepare"}
    unknown = {"prepared_md5": "unknown", "prepare_lock_sha256": "unknown"}
    assert provenance.provenance(inputs, stages) == unknown  # no DVC_ROOT: not run by DVC
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert provenance.provenance(inputs, stages) == unknown  # no dvc.lock yet


def test_params_drift_reads_dvcs_yaml_floats_and_names_each_changed_leaf(tmp_path):
    """DVC writes 1e-07 (YAML 1.2); params.yaml has 1.0e-7: the same number, no drift."""
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train@tiny-0:\n    params:\n      params.yaml:\n"
        "        train:\n          adam_eps: 1e-07\n          lr: 0.001\n"
        "        variants.tiny:\n          latent_dim: 8\n"
    )
    lock = provenance.read_lock(tmp_path)
    current = yaml.safe_load("train: {adam_eps: 1.0e-7, lr: 0.002}\nvariants: {tiny: {latent_dim: 8, norm: batch}}\n")
    assert lineage_checks.params_drift(lock, TRAIN, current) == [
        ("train.lr", 0.001, 0.002),
        ("variants.tiny.norm", None, "batch"),
    ]
    assert lineage_checks.params_drift(lock, "evaluate@tiny-0", current) == []  # not locked: nothing to compare


# ---------------------------------------------------------------- the lineage command, in-process project


@pytest.mark.parametrize(
    "key, value, expected",
    [
        (
            "variants.tiny.latent_dim",
            4,
            [
                "params edited: variants.tiny.latent_dim: models/tiny-seed0.pt was trained with 8, params.yaml has 4",
                "params edited: variants.tiny.latent_dim: dvc.lock's train@tiny-0 ran with 8, params.yaml has 4",
                "params edited: variants.tiny.latent_dim: dvc.lock's evaluate@tiny-0 ran with 8, params.yaml has 4",
            ],
        ),
        (
            "evaluate.ssim_window",
            "gaussian",
            [
                "params edited: evaluate.ssim_window: dvc.lock's evaluate@tiny-0 ran with 'uniform', "
                "params.yaml has 'gaussian'"
            ],
        ),
        ("seeds", [1], ["params edited: seeds no longer lists 0"]),
    ],
)
def test_edited_params_are_detected(copy, key, value, expected, capsys):
    edit_params(copy, key, value)
    assert problems(copy) == [f"{RUN}: {line}" for line in expected]
    assert lineage.main([RUN, "--root", str(copy)]) == 1
    assert capsys.readouterr().out.endswith("".join(f"{RUN}: {line}\n" for line in expected))


def test_a_key_newer_than_the_model_counts_as_its_default(copy):
    saved = torch.load(copy / MODEL, map_location="cpu", weights_only=False)
    del saved["spec"]["norm"], saved["train"]["loss"]  # as written before those keys existed
    torch.save(saved, copy / MODEL)
    assert not [line for line in problems(copy) if "params edited" in line]
    edit_params(copy, "variants.tiny.norm", "batch")  # a real edit of the new key is still caught
    assert (
        f"{RUN}: params edited: variants.tiny.norm: {MODEL} was trained with 'none', params.yaml has 'batch'"
        in problems(copy)
    )


def test_changed_data_is_detected(copy, tmp_path):
    before = prepared.manifest_digest(copy / "data" / "prepared")
    other = make_emnist_dir(tmp_path / "other", seed=1)
    prepare_from_directory(DataConfig(source=str(other)), other, copy / "data" / "prepared")
    now = prepared.manifest_digest(copy / "data" / "prepared")
    assert problems(copy) == [
        f"{RUN}: data changed: {where} was made from prepared data with manifest sha256 {before[:12]}, "
        f"data/prepared/manifest.json is now {now[:12]}"
        for where in (MODEL, f"reports/metrics/{RUN}.json")
    ]


def test_replaced_model_file_is_detected(copy):
    shutil.copy(copy / "models" / f"{RUN}.best.pt", copy / MODEL)  # a different file, same run
    found = problems(copy)
    assert kinds(found) == {"model file replaced", "metrics stale"}
    replaced = [line for line in found if "model file replaced" in line]
    assert "its MLflow run recorded" in replaced[0] and "dvc.lock's train@tiny-0 recorded" in replaced[1]
    assert f"reports/metrics/{RUN}.json was computed from a model with sha256" in " ".join(found)


def test_a_model_file_of_another_run_is_detected(copy):
    shutil.copy(copy / MODEL, copy / "models" / "tiny-seed1.pt")  # seed 1's file holds seed 0's model
    edit_params(copy, "seeds", [0, 1])
    assert f"tiny-seed1: model file replaced: models/tiny-seed1.pt holds {RUN}" in problems(copy, "tiny-seed1")


def test_missing_mlflow_run_is_detected(copy):
    run_id = saved_model(copy)["mlflow_run_id"]
    client(copy).delete_run(run_id)
    assert problems(copy) == [
        f"{RUN}: run missing: MLflow run {run_id} of {MODEL} is not in the tracking store "
        f"sqlite:///{copy / 'mlflow.db'}"
    ]


@pytest.mark.parametrize(
    "missing, expected",
    [
        (MODEL, f"model missing: {MODEL} does not exist (dvc repro {TRAIN})"),
        (f"reports/metrics/{RUN}.json", f"metrics stale: reports/metrics/{RUN}.json is missing (dvc repro {EVALUATE})"),
    ],
)
def test_a_missing_output_names_the_stage_to_rerun(copy, missing, expected):
    (copy / missing).unlink()
    assert problems(copy) == [f"{RUN}: {expected}"]


def test_stale_metrics_are_detected(copy, monkeypatch):
    """Retrained outside DVC and not re-evaluated: the metrics describe the old model file."""
    monkeypatch.setenv("COMPRESSNET_ROOT", str(copy))  # the train stage's files and store: the copy's
    params = load_params(copy / "params.yaml")
    train(params, VARIANT, 0, tracking.MlflowTracker())
    found = problems(copy)
    stale = [line for line in found if ": metrics stale: " in line]
    assert f"reports/metrics/{RUN}.json was computed from a model with sha256" in stale[0]
    assert f"reports/metrics/{RUN}.json belongs to MLflow run" in stale[1]
    assert kinds(found) == {"metrics stale", "model file replaced"}  # and DVC locked the old file


def test_a_missing_run_outside_the_matrix_names_the_experiment_that_adds_it(copy):
    outside = f"{VARIANT}-seed5"  # params.yaml's seeds do not list 5: no stage train@tiny-5 to repro
    assert problems(copy, outside) == [
        f"{outside}: model missing: models/{outside}.pt does not exist (outside params.yaml's matrix and seeds: "
        f"dvc exp run -S 'matrix=[{VARIANT}]' -S 'seeds=[5]')"
    ]


def test_what_dvc_recorded_in_the_model_and_metrics_is_checked_against_dvc_lock(built):
    """Under DVC the train and evaluate stages record dvc.lock's data/prepared md5 and train entry; outside it (this
    project's stages ran in-process) they record `unknown`, so the recorded values are set here."""
    project = lineage.Project.open(built)
    chain = lineage.gather(project, RUN, built / MODEL)
    prepared_md5 = provenance.out_md5(project.lock, "data/prepared")
    train_entry = provenance.entry_digest(project.lock, TRAIN)

    def recorded(prepared: str, train_lock: str) -> lineage.Chain:
        metrics = {**chain.metrics, "run": {**chain.metrics["run"], "dvc": {"train_lock_sha256": train_lock}}}
        return dataclasses.replace(chain, saved={**chain.saved, "dvc": {"prepared_md5": prepared}}, metrics=metrics)

    assert lineage_checks.check(recorded(prepared_md5, train_entry), project) == []
    assert lineage_checks.check(recorded("0" * 32 + ".dir", "f" * 64), project) == [
        f"data changed: {MODEL} was trained on data/prepared with dvc md5 000000000000, dvc.lock now records "
        f"{prepared_md5[:12]}",
        f"metrics stale: reports/metrics/{RUN}.json was computed when dvc.lock's {TRAIN} entry had sha256 "
        f"ffffffffffff, it now has {train_entry[:12]}",
    ]
