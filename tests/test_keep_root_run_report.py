"""scripts.keep_root_run and the report's inputs besides the runs (the baselines, the study stages) and the report
itself: kept with their files and directories while they are what the checkout's dvc.lock records."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dvc_data.hashfile.build import build
from dvc_data.hashfile.db import HashFileDB
from dvc_objects.fs.local import LocalFileSystem

from scripts import keep_root_run
from tests.root_run_support import CLASSIFIER, PREPARED, entries, outs, write_checkout, write_run


def report_inputs(root: Path) -> dict:
    """The baselines' and a study stage's entries, their files written under root: the report's other inputs."""
    (root / "reports" / "study").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "baselines.json").write_text("{}")
    (root / "reports" / "study" / "model01.json").write_text('{"mse": 0.00389}')
    return {
        "baselines": {"deps": [PREPARED], "outs": outs(root, "reports/baselines.json")},
        "study@model01": {"deps": [PREPARED, CLASSIFIER], "outs": outs(root, "reports/study/model01.json")},
        "plots": {"outs": [{"path": "reports/plots.json", "md5": "no such file"}]},
    }


def test_the_baselines_and_study_entries_are_kept_with_their_files_and_no_other_stage(
    tmp_path, root_twins, root_record
):
    checkout = tmp_path / "checkout"
    write_checkout(checkout, {"model01-seed0": 0.00446}, extra=report_inputs(checkout))
    lines = keep_root_run.keep(checkout, root_record, root_twins)
    assert lines[0] == "kept baselines, study@model01: the report's inputs besides the runs"
    kept = ["prepare", "classifier", "train@model01-0", "evaluate@model01-0", "baselines", "study@model01"]
    assert list(keep_root_run.lock_stages(root_record)) == kept  # not "plots": no input of the report
    assert (root_record / "reports" / "study" / "model01.json").read_text() == '{"mse": 0.00389}'
    assert (root_record / "reports" / "baselines.json").read_text() == "{}"
    assert (
        keep_root_run.keep(checkout, root_record, root_twins)[0] == f"kept 1 runs in {root_record} (0 new)"
    )  # said once


def test_a_baselines_file_other_than_its_entry_records_is_refused(tmp_path, root_twins, root_record):
    checkout = tmp_path / "checkout"
    write_checkout(checkout, {"model01-seed0": 0.00446}, extra=report_inputs(checkout))
    (checkout / "reports" / "baselines.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="reports/baselines.json has md5 .*, dvc.lock records"):
        keep_root_run.keep(checkout, root_record, root_twins)
    assert "baselines" not in keep_root_run.lock_stages(root_record)


def test_a_stage_run_again_to_the_same_outputs_is_kept_with_its_new_entry_and_other_outputs_refused(
    tmp_path, root_twins, root_record
):
    checkout = tmp_path / "checkout"
    write_checkout(checkout, {"model01-seed0": 0.00446}, extra=report_inputs(checkout))
    keep_root_run.keep(checkout, root_record, root_twins)
    refactored = {**report_inputs(checkout)["baselines"], "deps": [PREPARED, {"path": "pipeline/lib/x.py", "md5": "c"}]}
    write_checkout(checkout, {"model01-seed0": 0.00446}, extra={**report_inputs(checkout), "baselines": refactored})
    assert keep_root_run.keep(checkout, root_record, root_twins)[0].startswith(
        "baselines ran again to the same outputs"
    )
    assert keep_root_run.lock_stages(root_record)["baselines"] == refactored
    (checkout / "reports" / "baselines.json").write_text('{"rows": []}')
    other = {**refactored, "outs": outs(checkout, "reports/baselines.json")}
    (checkout / "dvc.lock").write_text(
        yaml.safe_dump({"stages": {**keep_root_run.lock_stages(checkout), "baselines": other}})
    )
    with pytest.raises(ValueError, match="changes or drops kept stages: baselines; nothing copied"):
        keep_root_run.keep(checkout, root_record, root_twins)
    assert keep_root_run.lock_stages(root_record)["baselines"] == refactored


def directory_md5(path: Path) -> str:
    """DVC's own md5 of a directory, as dvc.lock records it."""
    fs = LocalFileSystem()
    return build(HashFileDB(fs, str(path.parent / ".hashes")), str(path), fs, "md5")[2].hash_info.value


def add_report(root: Path, runs: dict[str, float], trained: str | None = None, curve: bool = True) -> Path:
    """A checkout with the report inputs' entries and the report's, which read root's metrics, histories and
    baselines as they are now and wrote report.md and a directory of figures (with rd/curve.svg if curve)."""
    write_checkout(root, runs, extra=report_inputs(root), trained=trained)
    (root / "reports" / "figures" / "rd").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "figures" / "seeds.png").write_bytes(b"png")
    if curve:
        (root / "reports" / "figures" / "rd" / "curve.svg").write_text("<svg/>")
    (root / "reports" / "report.md").write_text("# report")
    reads = [{"path": f"reports/{d}", "md5": directory_md5(root / "reports" / d)} for d in ("metrics", "history")]
    figures = {"path": "reports/figures", "md5": directory_md5(root / "reports" / "figures")}
    report = {
        "deps": [*reads, *outs(root, "reports/baselines.json")],
        "outs": [*outs(root, "reports/report.md"), figures],
    }
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    lock["stages"]["report"] = report
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    return root


def test_the_report_is_kept_with_its_figures_while_it_read_the_runs_the_checkout_holds(
    tmp_path, root_twins, root_record
):
    checkout = add_report(tmp_path / "checkout", {"model01-seed0": 0.00446})
    assert "kept the report on these runs" in keep_root_run.keep(checkout, root_record, root_twins)
    assert (root_record / "reports" / "figures" / "rd" / "curve.svg").read_text() == "<svg/>"
    assert "report" in keep_root_run.lock_stages(root_record)
    (checkout / "reports" / "figures" / "seeds.png").write_bytes(b"edited")
    with pytest.raises(ValueError, match=r"reports/figures has md5 [0-9a-f]{32}\.dir, dvc.lock records"):
        keep_root_run.keep(checkout, root_record, root_twins)
    later = add_report(tmp_path / "later", {"model01-seed0": 0.00446})  # the report, then one more run
    write_run(later, "model04-seed0", 0.0038)
    lock = yaml.safe_load((later / "dvc.lock").read_text())
    lock["stages"] |= entries(later, "model04-seed0")
    (later / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    lines = keep_root_run.keep(later, root_record, root_twins)
    assert (
        "the report is not kept: the record cannot hold reports/metrics, reports/history as it read them" in lines[-2]
    )
    assert lines[-1].endswith("(1 new)") and "report" not in keep_root_run.lock_stages(root_record)
    assert not (root_record / "reports" / "figures").exists() and not (root_record / "reports" / "report.md").exists()


def test_a_report_that_read_the_history_of_a_run_not_evaluated_is_not_kept(tmp_path, root_twins, root_record):
    checkout = add_report(tmp_path / "checkout", {"model01-seed0": 0.00446}, trained="model03-seed1")
    lines = keep_root_run.keep(checkout, root_record, root_twins)
    assert lines[-2] == "the report is not kept: the record cannot hold reports/history as it read them; run it again"
    assert not (root_record / "reports" / "history" / "model03-seed1.csv").exists()


def test_a_report_kept_again_leaves_no_figure_of_the_earlier_one_and_one_gone_from_the_checkout_is_said(
    tmp_path, root_twins, root_record
):
    keep_root_run.keep(add_report(tmp_path / "first", {"model01-seed0": 0.00446}), root_record, root_twins)
    second = add_report(tmp_path / "second", {"model01-seed0": 0.00446}, curve=False)
    (second / "reports" / "report.md").write_text("# report, again")  # another entry: the record takes it
    lock = yaml.safe_load((second / "dvc.lock").read_text())
    lock["stages"]["report"]["outs"][0] = outs(second, "reports/report.md")[0]
    (second / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    assert "kept the report on these runs" in keep_root_run.keep(second, root_record, root_twins)
    assert sorted(p.name for p in (root_record / "reports" / "figures").rglob("*")) == ["seeds.png"]
    del lock["stages"]["report"]
    (second / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    lines = keep_root_run.keep(second, root_record, root_twins)
    assert lines[-2] == "the report is not kept: the checkout's dvc.lock has none (the record's is removed)"
    assert not (root_record / "reports" / "report.md").exists()


def test_an_output_that_leaves_reports_is_refused(tmp_path, root_twins, root_record):
    checkout = tmp_path / "checkout"
    (checkout / "reports").mkdir(parents=True)
    (checkout / "outside.json").write_text("{}")
    escape = {"baselines": {"deps": [PREPARED], "outs": outs(checkout, "reports/../outside.json")}}
    write_checkout(checkout, {"model01-seed0": 0.00446}, extra=escape)
    with pytest.raises(ValueError, match=r"reports/\.\./outside.json is outside reports/"):
        keep_root_run.keep(checkout, root_record, root_twins)
    assert not (root_record / "outside.json").exists()
