"""`python -m pipeline.tools.lineage TARGET`: each kind of target it takes, and the ones it refuses, on the in-process
project of tests/lineage_support.py (`built`, and `copy` for a test that changes it)."""

from __future__ import annotations

import socket

import pytest
import torch

from pipeline.tools import lineage
from tests.lineage_support import MODEL, RUN, TRAIN, VARIANT, assert_clean_chain, client, saved_model

pytestmark = pytest.mark.usefixtures("isolated_store")


@pytest.mark.parametrize("target", ["run name", "variant", "model file", "MLflow run id", "root from COMPRESSNET_ROOT"])
def test_clean_chain_passes(built, target, capsys, monkeypatch):
    arg = {
        "run name": RUN,
        "variant": VARIANT,
        "model file": str(built / MODEL),
        "MLflow run id": saved_model(built)["mlflow_run_id"],
    }.get(target, RUN)
    if target == "root from COMPRESSNET_ROOT":
        monkeypatch.setenv("COMPRESSNET_ROOT", str(built))
        assert lineage.main([arg]) == 0
    else:
        assert lineage.main([arg, "--root", str(built)]) == 0
    assert_clean_chain(built, capsys.readouterr().out)


def test_unknown_target_is_an_error(built, capsys):
    assert lineage.main(["no-such-thing", "--root", str(built)]) == 2
    assert "lineage: error: no-such-thing: not a model file, a variant" in capsys.readouterr().err
    assert lineage.main(["model99-seed0", "--root", str(built)]) == 2
    assert capsys.readouterr().err == "lineage: error: model99-seed0: params.yaml has no variant model99\n"


def test_a_missing_model_file_named_as_a_path_names_the_stage_to_rerun(copy, capsys):
    (copy / MODEL).unlink()
    assert lineage.main([MODEL, "--root", str(copy)]) == 1
    assert f"{RUN}: model missing: {MODEL} does not exist (dvc repro {TRAIN})" in capsys.readouterr().out
    for elsewhere in ["models/nothing.pt", f"backup/{RUN}.pt", str(copy.parent / f"{RUN}.pt")]:
        assert lineage.main([elsewhere, "--root", str(copy)]) == 2  # not the run's own file: nothing to check
        assert capsys.readouterr().err == f"lineage: error: {elsewhere}: no such model file\n"


def test_the_best_checkpoint_is_refused_with_the_runs_own_lineage_named(built, capsys):
    best = built / "models" / f"{RUN}.best.pt"
    assert lineage.main([str(best), "--root", str(built)]) == 2
    err = capsys.readouterr().err
    assert f"{best}: {RUN}'s checkpoint of lowest val loss (epoch 1)" in err
    assert f"python -m pipeline.tools.lineage {RUN}" in err


def test_a_tracking_server_out_of_reach_is_said_at_once_not_as_a_missing_run(built, capsys, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert lineage.main([RUN, "--root", str(built)]) == 2
    assert f"MLflow tracking server http://127.0.0.1:{port} does not answer; start it" in capsys.readouterr().err


def test_model_files_and_runs_of_other_stages_are_refused_by_what_they_are(copy, capsys):
    classifier = copy / "models" / "classifier.pt"
    assert lineage.main([str(classifier), "--root", str(copy)]) == 2
    assert f"{classifier}: not a training run's model file (no variant; the classifier's?)" in capsys.readouterr().err
    study = copy / "models" / "study" / f"{VARIANT}.pt"  # the study stage's file: its seed is unknown, saved as -1
    study.parent.mkdir()
    torch.save({**saved_model(copy), "seed": -1}, study)
    assert lineage.main([str(study), "--root", str(copy)]) == 2
    assert f"{study}: the study's published weights for {VARIANT}, not a training run; stage study@{VARIANT}" in (
        capsys.readouterr().err
    )
    store = client(copy)
    experiment = store.get_run(saved_model(copy)["mlflow_run_id"]).info.experiment_id
    run = store.create_run(experiment, tags={"stage": f"study@{VARIANT}", "variant": VARIANT})  # no seed tag
    assert lineage.main([run.info.run_id, "--root", str(copy)]) == 2
    assert f"{run.info.run_id}: an MLflow run of stage study@{VARIANT}, not a variant" in capsys.readouterr().err
