"""scripts.keep_root_run: a finished run of the root matrix copied into its record, checked against its twin and
against what the checkout's dvc.lock records."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.lib.config import parse_params
from scripts import keep_root_run
from tests import params_support
from tests.root_run_support import CLASSIFIER, PARAMS, write_checkout, write_run


def test_a_new_run_is_copied_in_checked_against_its_twin_and_given_its_table_row(tmp_path, root_twins, root_record):
    runs = {"model01-seed0": 0.00446, "model04-seed0": 0.0038, "model04_linear-seed0": 0.0032}
    checkout = write_checkout(tmp_path / "checkout", runs)
    lines = keep_root_run.keep(checkout, root_record, root_twins)
    assert lines[0] == "model04-seed0: history equal to its twin's (study4), test metrics equal"
    assert lines[1] == "| model04 seed 0 | 0.00380 | 0.73 | 2 | 25.00 dB | 60 (20.0) |"  # 0.0038 / model04's 0.00520
    assert (
        lines[2] == "model04_linear-seed0: history DIFFERENT from its twin's (linear4), test metrics DIFFERENT in mse"
    )
    assert lines[-1].endswith("(2 new)")
    assert keep_root_run.lock_stages(root_record) == keep_root_run.lock_stages(checkout)
    assert list(keep_root_run.lock_stages(root_record)) == list(keep_root_run.lock_stages(checkout))  # in its order
    assert sorted(p.name for p in (root_record / "reports" / "metrics").iterdir()) == [f"{run}.json" for run in runs]


def test_a_run_trained_but_not_evaluated_is_left_out_of_the_record_and_may_train_again(
    tmp_path, root_twins, root_record
):
    before = keep_root_run.lock_stages(root_record)
    checkout = write_checkout(tmp_path / "checkout", {"model01-seed0": 0.00446}, trained="model03-seed1")
    assert keep_root_run.keep(checkout, root_record, root_twins)[-1].endswith("(0 new)")
    assert keep_root_run.lock_stages(root_record) == before  # its model is not kept: the next session trains it again
    assert not (root_record / "reports" / "history" / "model03-seed1.csv").exists()  # nor its history
    later = write_checkout(tmp_path / "later", {"model01-seed0": 0.00446, "model03-seed1": 0.004})
    assert keep_root_run.keep(later, root_record, root_twins)[-1].endswith("(1 new)")
    assert "evaluate@model03-1" in keep_root_run.lock_stages(root_record)


def test_a_checkout_whose_lock_changes_a_kept_stage_is_refused_and_nothing_is_copied(tmp_path, root_twins, root_record):
    before = (root_record / "dvc.lock").read_text()
    changed = {"prepare": {"outs": [{"path": "data/prepared", "md5": "other.dir"}]}}
    runs = {"model01-seed0": 0.00446, "model04-seed0": 0.0038}
    checkout = write_checkout(tmp_path / "checkout", runs, extra=changed)
    with pytest.raises(ValueError, match="changes or drops kept stages: prepare; nothing copied"):
        keep_root_run.keep(checkout, root_record, root_twins)
    assert (root_record / "dvc.lock").read_text() == before
    assert not (root_record / "reports" / "metrics" / "model04-seed0.json").exists()


def test_metrics_without_their_lock_entries_are_refused_naming_the_commit_that_records_them(
    tmp_path, root_twins, root_record
):
    checkout = write_checkout(tmp_path / "checkout", {"model01-seed0": 0.00446})
    write_run(checkout, "model04-seed2", 0.004)  # evaluated, but the executor stopped before recording it
    with pytest.raises(
        ValueError,
        match=r"model04-seed2: metrics, but dvc.lock has no train@model04-2, evaluate@model04-2; rerun "
        r"evaluate@model04-2 through the executor",
    ):
        keep_root_run.keep(checkout, root_record, root_twins)
    assert not (root_record / "reports" / "metrics" / "model04-seed2.json").exists()


def test_a_file_or_a_param_other_than_dvc_lock_records_is_refused(tmp_path, root_twins, root_record):
    checkout = write_checkout(tmp_path / "checkout", {"model01-seed0": 0.00446, "model04-seed0": 0.0038})
    (checkout / "reports" / "metrics" / "model01-seed0.json").write_text('{"mse": 0.999}')  # edited after evaluate
    edited_file = "reports/metrics/model01-seed0.json has md5 [0-9a-f]{32}, dvc.lock records [0-9a-f]{32}"
    with pytest.raises(ValueError, match=edited_file):
        keep_root_run.keep(checkout, root_record, root_twins)
    edited = write_checkout(tmp_path / "edited", {"model01-seed0": 0.00446, "model04-seed0": 0.0038})
    (edited / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "train": {"lr": 0.01}}))  # dvc exp run -S, say
    with pytest.raises(ValueError, match=r"train.lr: train@model01-0 ran with 0.003, params.yaml has 0.01"):
        keep_root_run.keep(edited, root_record, root_twins)
    assert yaml.safe_load((root_record / "params.yaml").read_text()) == PARAMS
    assert not (root_record / "reports" / "metrics" / "model04-seed0.json").exists()


def test_a_copy_stopped_before_the_lock_is_written_is_done_again_in_full(
    tmp_path, root_twins, root_record, monkeypatch
):
    checkout = write_checkout(tmp_path / "checkout", {"model01-seed0": 0.00446, "model04-seed0": 0.0038})
    monkeypatch.setattr(keep_root_run, "dump_yaml", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        keep_root_run.keep(checkout, root_record, root_twins)
    assert (root_record / "reports" / "metrics" / "model04-seed0.json").exists()  # copied, but not in the record's lock
    monkeypatch.undo()
    lines = keep_root_run.keep(checkout, root_record, root_twins)
    assert lines[0].startswith("model04-seed0: history equal") and lines[-1].endswith("(1 new)")


def test_the_command_says_what_is_missing_from_a_directory_that_is_not_a_checkout(tmp_path, capsys):
    assert keep_root_run.main([str(tmp_path), "--record", str(tmp_path / "record")]) == 1
    assert "not a checkout that ran the matrix: no params.yaml, dvc.lock" in capsys.readouterr().err


def test_a_run_evaluated_on_a_model_train_has_since_replaced_is_refused(tmp_path, root_twins, root_record):
    retrained = {"path": "models/model04-seed0.pt", "md5": "the model trained again"}
    checkout = write_checkout(tmp_path / "checkout", {"model01-seed0": 0.00446, "model04-seed0": 0.0038})
    lock = yaml.safe_load((checkout / "dvc.lock").read_text())
    train = lock["stages"]["train@model04-0"]
    train["outs"] = [retrained, *train["outs"][1:]]  # train ran again after evaluate
    (checkout / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    with pytest.raises(
        ValueError,
        match="evaluate@model04-0 read models/model04-seed0.pt with md5 model of "
        "model04-seed0, train@model04-0 wrote the model trained again",
    ):
        keep_root_run.keep(checkout, root_record, root_twins)


def retrain_classifier(checkout: Path, new_runs: list[str], md5: str = "trained again") -> None:
    """The checkout's classifier trained again (another kind of CPU), and new_runs evaluated against it."""
    lock = yaml.safe_load((checkout / "dvc.lock").read_text())
    classifier = {**CLASSIFIER, "md5": md5}
    lock["stages"]["classifier"]["outs"][0] = classifier
    for run in new_runs:
        evaluate = lock["stages"][keep_root_run.run_stages(run)[1]]
        evaluate["deps"] = [classifier if dep["path"] == CLASSIFIER["path"] else dep for dep in evaluate["deps"]]
    (checkout / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def test_a_retrained_classifier_is_taken_only_when_asked_and_the_runs_kept_before_still_name_theirs(
    tmp_path, root_twins, root_record
):
    runs = {"model01-seed0": 0.00446, "model04-seed0": 0.0038, "model04_linear-seed0": 0.0032}
    checkout = write_checkout(tmp_path / "checkout", runs)
    retrain_classifier(checkout, ["model04-seed0", "model04_linear-seed0"])
    with pytest.raises(ValueError, match=r"kept stages: classifier \(the classifier trained again to other weights"):
        keep_root_run.keep(checkout, root_record, root_twins)
    lines = keep_root_run.keep(checkout, root_record, root_twins, retrained_classifier=True)
    assert lines[-2].startswith("the classifier trained again; 1 runs kept before") and lines[-1].endswith("(2 new)")
    stages = keep_root_run.lock_stages(root_record)
    assert stages["classifier"]["outs"][0]["md5"] == "trained again"
    assert CLASSIFIER in stages["evaluate@model01-0"]["deps"]  # measured against the earlier classifier
    assert {**CLASSIFIER, "md5": "trained again"} in stages["evaluate@model04-0"]["deps"]
    later = write_checkout(tmp_path / "later", {**runs, "model02-seed0": 0.0037})
    retrain_classifier(later, ["model04-seed0", "model04_linear-seed0", "model02-seed0"])
    assert keep_root_run.keep(later, root_record, root_twins)[-1].endswith(
        "(1 new)"
    )  # no flag: the record's classifier


def test_a_classifier_changed_beyond_its_weights_or_dropped_is_refused_even_when_asked(
    tmp_path, root_twins, root_record
):
    checkout = write_checkout(tmp_path / "checkout", {"model01-seed0": 0.00446, "model04-seed0": 0.0038})
    retrain_classifier(checkout, ["model04-seed0"])
    lock = yaml.safe_load((checkout / "dvc.lock").read_text())
    lock["stages"]["classifier"]["deps"].append({"path": "pipeline/stages/classifier.py", "md5": "edited"})
    (checkout / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    with pytest.raises(ValueError, match="changes or drops kept stages: classifier; nothing copied"):
        keep_root_run.keep(checkout, root_record, root_twins, retrained_classifier=True)
    del lock["stages"]["classifier"]
    (checkout / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    with pytest.raises(ValueError, match="changes or drops kept stages: classifier; nothing copied"):
        keep_root_run.keep(checkout, root_record, root_twins, retrained_classifier=True)
    assert "evaluate@model04-0" not in keep_root_run.lock_stages(root_record)


def test_the_command_takes_a_retrained_classifier_when_asked(tmp_path, root_twins, root_record, monkeypatch, capsys):
    checkout = write_checkout(tmp_path / "checkout", {"model01-seed0": 0.00446, "model04-seed0": 0.0038})
    retrain_classifier(checkout, ["model04-seed0"])
    monkeypatch.setattr(keep_root_run, "TWINS", root_twins)
    monkeypatch.setattr(keep_root_run, "continue_line", lambda checkout, root_record: "the runs left")
    assert keep_root_run.main([str(checkout), "--record", str(root_record)]) == 1
    assert keep_root_run.main([str(checkout), "--record", str(root_record), "--retrained-classifier"]) == 0
    assert "the classifier trained again" in capsys.readouterr().out


def test_a_new_run_measured_against_a_classifier_other_than_the_retrained_one_is_refused(
    tmp_path, root_twins, root_record
):
    checkout = write_checkout(tmp_path / "checkout", {"model01-seed0": 0.00446, "model04-seed0": 0.0038})
    retrain_classifier(checkout, [])  # model04-seed0 was evaluated before the classifier trained again
    with pytest.raises(ValueError, match="evaluate@model04-0 read models/classifier.pt with md5 b, classifier wrote"):
        keep_root_run.keep(checkout, root_record, root_twins, retrained_classifier=True)
    assert not (root_record / "reports" / "metrics" / "model04-seed0.json").exists()


def test_a_corrupt_dvc_lock_is_one_line(tmp_path, capsys):
    checkout = write_checkout(tmp_path / "checkout", {"model01-seed0": 0.00446})
    (checkout / "dvc.lock").write_text("stages: [\n")
    assert keep_root_run.main([str(checkout), "--record", str(tmp_path / "record")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def study_and_twins(raw: dict, names: tuple[str, str]) -> dict:
    """raw's two variants under `names`, each with a linear-latent twin (`<name>_linear`), all four in the matrix."""
    study = dict(zip(names, raw["variants"].values()))
    root_twins = {f"{name}_linear": {**spec, "latent_activation": "linear"} for name, spec in study.items()}
    return {**raw, "variants": study | root_twins, "matrix": [*study, *root_twins]}


def test_the_runs_left_come_study_variants_first_seed_by_seed_then_their_twins():
    params = parse_params(study_and_twins(params_support.valid(), ("up3", "up4")))
    assert keep_root_run.runs_left(params, {"up3-seed0", "up4_linear-seed1"}) == [
        "evaluate@up4-0",
        "evaluate@up3-1",
        "evaluate@up4-1",
        "evaluate@up3_linear-0",
        "evaluate@up4_linear-0",
        "evaluate@up3_linear-1",
    ]


def test_the_last_line_is_the_executors_command_for_the_runs_the_record_lacks(tmp_path, root_record):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    raw = study_and_twins(params_support.valid(), ("model01", "model04"))  # the record keeps model01-seed0
    (checkout / "params.yaml").write_text(yaml.safe_dump(raw))
    targets = "evaluate@model04-0 evaluate@model01-1 evaluate@model04-1 evaluate@model01_linear-0"
    command = f"cd {checkout} && COMPRESSNET_FRESH_PROCESSES=1 nice -n 10 python -m pipeline.tools.parallel --jobs 1"
    line = keep_root_run.continue_line(checkout, root_record)
    assert line.startswith(f"7 runs left; in the activated shell: {command} {targets}")
    (checkout / "params.yaml").write_text(yaml.safe_dump({**raw, "seeds": [0], "matrix": ["model01"]}))
    report = f"every run of the matrix is kept; the report: cd {checkout} && dvc repro --single-item report"
    assert keep_root_run.continue_line(checkout, root_record) == report
    lock = yaml.safe_load((root_record / "dvc.lock").read_text())
    lock["stages"]["report"] = {"outs": []}
    (root_record / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert (
        keep_root_run.continue_line(checkout, root_record) == "every run of the matrix is kept, and the report on them"
    )
