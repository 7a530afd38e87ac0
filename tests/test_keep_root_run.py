"""scripts.keep_root_run: a finished run of the root matrix copied into its record, checked against its twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scripts import keep_root_run

HISTORY = "epoch,train_loss,train_objective,val_loss,lr,seconds,images_per_s,val_output_range\n"
LOCK = {"prepare": {"outs": [{"path": "data/prepared", "md5": "a.dir"}]}, "classifier": {"outs": [{"md5": "b"}]}}


def write_run(root: Path, run: str, mse: float, train_loss: str = "0.5", reports: str = "reports/") -> None:
    """A run's uncached outputs under root/<reports>: the record's layout, or a twin snapshot's with reports=""."""
    rows = "".join(
        f"{epoch},{train_loss},{train_loss},0.25,0.001,{s},100,0.9\n" for epoch, s in enumerate((10, 30, 20), 1)
    )
    for name, text in (
        (f"{reports}history/{run}.csv", HISTORY + rows),
        (f"{reports}metrics/{run}.json", json.dumps({"mse": mse, "psnr": 25.0, "dead_latent_units": 2, "run": {}})),
        (f"{reports}per_class/{run}.csv", "class,mse\n"),
        (f"{reports}samples/{run}.npy", ""),
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def write_checkout(root: Path, lock: dict, runs: dict[str, float]) -> Path:
    for run, mse in runs.items():
        write_run(root, run, mse)
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": lock}, sort_keys=False))
    (root / "params.yaml").write_text("seeds: [0, 1, 2]\n")
    (root / "reports" / "classifier.json").write_text("{}")
    return root


@pytest.fixture
def twins(tmp_path: Path) -> dict[str, Path]:
    twins = {"": tmp_path / "study4", "_linear": tmp_path / "linear4"}
    write_run(twins[""], "model04-seed0", 0.0038, reports="")
    write_run(twins["_linear"], "model04_linear-seed0", 0.0031, train_loss="0.4", reports="")
    return twins


def test_a_new_run_is_copied_in_checked_against_its_twin_and_given_its_table_row(tmp_path, twins):
    record = write_checkout(tmp_path / "record", LOCK, {"model01-seed0": 0.00446})
    later = {**LOCK, "train@model04-0": {"outs": [{"md5": "c"}]}}
    runs = {"model01-seed0": 0.00446, "model04-seed0": 0.0038, "model04_linear-seed0": 0.0032}
    checkout = write_checkout(tmp_path / "checkout", later, runs)
    lines = keep_root_run.keep(checkout, record, twins)
    assert lines[0] == "model04-seed0: history equal to its twin's (study4), test metrics equal"
    assert lines[1] == "| model04 seed 0 | 0.00380 | 0.73 | 2 | 25.00 dB | 60 (20.0) |"  # 0.0038 / model04's 0.00520
    assert (
        lines[2] == "model04_linear-seed0: history DIFFERENT from its twin's (linear4), test metrics DIFFERENT in mse"
    )
    assert lines[-1].endswith("(2 new)")
    assert keep_root_run.lock_stages(record) == later
    assert list(keep_root_run.lock_stages(record)) == list(later)  # in the checkout's order
    assert sorted(p.name for p in (record / "reports" / "metrics").iterdir()) == [f"{run}.json" for run in runs]


def test_a_run_trained_but_not_evaluated_is_left_out_of_the_record_and_may_train_again(tmp_path, twins):
    record = write_checkout(tmp_path / "record", LOCK, {"model01-seed0": 0.00446})
    unfinished = {**LOCK, "train@model03-1": {"outs": [{"md5": "history as first trained"}]}}
    checkout = write_checkout(tmp_path / "checkout", unfinished, {"model01-seed0": 0.00446})
    assert keep_root_run.keep(checkout, record, twins)[-1].endswith("(0 new)")
    assert keep_root_run.lock_stages(record) == LOCK  # its model is not kept: the next session trains it again
    retrained = {**unfinished, "train@model03-1": {"outs": [{"md5": "history with other seconds"}]}}
    later = write_checkout(tmp_path / "later", retrained, {"model01-seed0": 0.00446, "model03-seed1": 0.004})
    assert keep_root_run.keep(later, record, twins)[-1].endswith("(1 new)")
    assert keep_root_run.lock_stages(record) == retrained


def test_a_checkout_whose_lock_changes_a_kept_stage_is_refused_and_nothing_is_copied(tmp_path, twins):
    record = write_checkout(tmp_path / "record", LOCK, {"model01-seed0": 0.00446})
    before = (record / "dvc.lock").read_text()
    changed = {**LOCK, "prepare": {"outs": [{"path": "data/prepared", "md5": "other.dir"}]}}
    checkout = write_checkout(tmp_path / "checkout", changed, {"model01-seed0": 0.00446, "model04-seed0": 0.0038})
    with pytest.raises(ValueError, match="changes or drops kept stages: prepare; nothing copied"):
        keep_root_run.keep(checkout, record, twins)
    assert (record / "dvc.lock").read_text() == before
    assert not (record / "reports" / "metrics" / "model04-seed0.json").exists()


def test_the_command_says_what_is_missing_from_a_directory_that_is_not_a_checkout(tmp_path, capsys):
    assert keep_root_run.main([str(tmp_path), "--record", str(tmp_path / "record")]) == 1
    assert (
        "not a checkout that ran the matrix: no params.yaml, reports/classifier.json, dvc.lock"
        in capsys.readouterr().err
    )
