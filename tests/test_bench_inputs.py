"""The benchmarks' arguments: a name, count or git revision they cannot use is refused with one argparse error,
before any work, temporary folder or MLflow run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from benchmarks import arguments, bench_baselines, bench_epochs, bench_matrix, bench_overhead, bench_refine, bench_share
from pipeline import paths
from pipeline.lib.config import parse_params
from pipeline.lib.dataset import prepare_from_directory


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch) -> Path:
    """Where tempfile makes the benchmarks' temporary folders in this test."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def refused(main, argv: list[str], capsys) -> str:
    """The last line of the usage error `main` exits with on these arguments."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_an_only_row_not_in_the_plan_is_refused_with_the_plan_s_rows_before_any_mlflow_run(
    project_root, emnist_dir, mlflow_store, tmp_path, capsys
):
    raw = yaml.safe_load((paths.REPO_ROOT / "params.yaml").read_text())
    raw["data"]["source"] = str(emnist_dir)
    paths.params_file().write_text(yaml.safe_dump(raw))
    prepare_from_directory(parse_params(raw).data, emnist_dir, paths.prepared_dir())  # what the run would train on
    error = refused(bench_epochs.main, ["--only", "model01:study", "model01:stduy"], capsys)
    rows = ", ".join(f"{variant}:{recipe}" for variant, recipe, _ in bench_epochs.PLAN)
    assert error.endswith(f"argument --only: 'model01:stduy' is not a row of the plan ({rows})")
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # the store was never opened
    assert not paths.reports_dir().exists()


def test_every_row_of_the_plan_can_be_chosen_with_only():
    for variant, recipe, _ in bench_epochs.PLAN:
        assert bench_epochs.plan_row(f"{variant}:{recipe}") == f"{variant}:{recipe}"


@pytest.mark.parametrize("main", [bench_overhead.main, bench_refine.main], ids=["overhead", "refine"])
def test_a_before_revision_git_does_not_know_is_named_before_any_work(main, temp_root, capsys):
    error = refused(main, ["--before", "nosuchrev"], capsys)
    assert error.endswith(f"argument --before: 'nosuchrev' is not a git revision of {paths.REPO_ROOT}")
    assert list(temp_root.iterdir()) == []


def test_a_revision_git_knows_is_taken_as_given():
    assert arguments.git_revision("HEAD") == "HEAD"


@pytest.mark.parametrize(
    ("main", "argv", "error"),
    [
        (bench_baselines.main, ["--repeats", "0"], "argument --repeats: 0 is less than 1"),
        (bench_refine.main, ["--chunks", "-2"], "argument --chunks: -2 is less than 1"),
        (bench_share.main, ["--concurrent", "2", "0"], "argument --concurrent: 0 is less than 1"),
        (bench_share.main, ["--threads", "-1"], "argument --threads: -1 is less than 0"),
        (bench_matrix.main, ["--seeds", "two"], "argument --seeds: 'two' is not a whole number"),
    ],
    ids=["baselines-repeats", "refine-chunks", "share-concurrent", "share-threads", "matrix-seeds"],
)
def test_a_count_a_benchmark_cannot_use_is_refused_when_arguments_are_parsed(
    main, argv, error, project_root, temp_root, capsys
):
    assert refused(main, argv, capsys).endswith(error)
    assert list(temp_root.iterdir()) == [] and list(project_root.iterdir()) == []


def test_counts_of_at_least_the_minimum_are_taken():
    assert arguments.positive("1") == 1 and arguments.non_negative("0") == 0
