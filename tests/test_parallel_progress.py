"""The executor's dispatch: stages DVC finds up to date leave the progress bar's total and release the next in
dvc.yaml's order; a stop signal comes first."""

from __future__ import annotations

import io
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from tqdm import tqdm

from pipeline.tools import parallel, stage_graph
from pipeline.tools.stop_signal import Stopped, StopSignal

UPSTREAM = {"prepare": set(), "train@a-0": {"prepare"}, "report": {"train@a-0"}}


def dispatching_executor(changed: dict[str, str], stop: StopSignal, monkeypatch) -> tuple[SimpleNamespace, list]:
    """An executor with just what dispatch uses; DVC finds only the stages in `changed` changed."""
    monkeypatch.setattr(parallel, "command_if_changed", lambda root, name, clear_outputs: changed.get(name))
    executor = SimpleNamespace(root=Path("."), args=SimpleNamespace(remote=None), upstream=UPSTREAM, done=set())
    executor.running, executor.slots, executor.stop, submitted = {}, 1, stop, []
    executor.ready = lambda: parallel.Executor.ready(executor)
    executor.waiting = lambda: parallel.Executor.waiting(executor)
    executor.submit = lambda name, cmd: submitted.append((name, cmd)) or f"ref of {name}"
    executor.command_if_changed = lambda name: parallel.Executor.command_if_changed(executor, name)
    return executor, submitted


@pytest.fixture
def stop():
    signals = StopSignal()
    yield signals
    signals.restore()


def test_stages_found_up_to_date_leave_the_bar_and_a_changed_one_is_dispatched(monkeypatch, stop):
    changed = {"report": "python -m pipeline.stages.report"}
    executor, submitted = dispatching_executor(changed, stop, monkeypatch)

    with tqdm(total=len(UPSTREAM), file=io.StringIO()) as bar:
        parallel.Executor.dispatch(executor, bar)
        assert (bar.total, bar.n) == (1, 0)  # prepare and train were up to date; report runs, not finished yet
    assert executor.done == {"prepare", "train@a-0"} and submitted == [("report", changed["report"])]
    assert executor.running == {"ref of report": "report"}


def test_stages_found_up_to_date_release_the_next_in_the_pipelines_order_at_once(monkeypatch, stop):
    upstream = {"prepare": set(), "classifier": {"prepare"}, "study@m": {"classifier"}, "train@a-0": {"prepare"}}
    changed = {"study@m": "study", "train@a-0": "train"}  # a resumed run: prepare and classifier are done
    executor, submitted = dispatching_executor(changed, stop, monkeypatch)
    executor.upstream = upstream
    with tqdm(total=len(upstream), file=io.StringIO()) as bar:
        parallel.Executor.dispatch(executor, bar)
    assert submitted == [("study@m", "study")]  # not train, which was ready before classifier was found done


PIPELINE = {  # dvc.yaml's order
    "prepare": set(),
    "classifier": {"prepare"},
    "train@a-0": {"prepare"},
    "train@b-0": {"prepare"},
    "trainer": {"prepare"},  # `train` must not name it
    "evaluate@a-0": {"train@a-0", "classifier"},
    "evaluate@b-0": {"train@b-0", "classifier"},
    "report": {"evaluate@a-0", "evaluate@b-0"},
}


def test_targets_bring_only_what_they_need_first_the_first_targets():
    needed = stage_graph.needed_for(PIPELINE, ["evaluate@b-0", "evaluate@a-0"])
    assert list(needed) == ["prepare", "classifier", "train@b-0", "evaluate@b-0", "train@a-0", "evaluate@a-0"]
    assert needed["evaluate@a-0"] == PIPELINE["evaluate@a-0"]


def test_a_matrix_stages_name_targets_all_its_items_and_no_target_means_every_stage():
    assert list(stage_graph.needed_for(PIPELINE, ["train"])) == ["prepare", "train@a-0", "train@b-0"]
    assert stage_graph.needed_for(PIPELINE, []) == PIPELINE


def test_an_unknown_target_is_refused_with_the_stages_there_are():
    with pytest.raises(ValueError) as refused:
        stage_graph.needed_for(PIPELINE, ["evaluate@c-0"])
    stages = "prepare, classifier, train@…, trainer, evaluate@…, report"  # a matrix stage once, not each of its items
    assert str(refused.value) == f"no stage 'evaluate@c-0' in dvc.yaml (its stages: {stages})"


def test_one_job_runs_the_targets_one_after_another(monkeypatch, stop):
    executor, submitted = dispatching_executor({}, stop, monkeypatch)  # every stage changed: below
    executor.upstream = stage_graph.needed_for(PIPELINE, ["evaluate@a-0", "evaluate@b-0"])
    executor.done = {"prepare", "classifier", "train@a-0"}
    monkeypatch.setattr(parallel, "command_if_changed", lambda root, name, clear_outputs: name)
    with tqdm(total=len(executor.upstream), file=io.StringIO()) as bar:
        parallel.Executor.dispatch(executor, bar)
    assert submitted == [("evaluate@a-0", "evaluate@a-0")]  # not train@b-0, ready too but for the second target


def test_a_stop_signal_is_acted_on_before_the_next_stage_starts(monkeypatch, stop):
    executor, submitted = dispatching_executor({"prepare": "python -m pipeline.stages.prepare"}, stop, monkeypatch)
    stop(signal.SIGTERM, None)  # as the signal calls it
    with tqdm(total=len(UPSTREAM), file=io.StringIO()) as bar, pytest.raises(Stopped, match="SIGTERM"):
        parallel.Executor.dispatch(executor, bar)
    assert submitted == [] and executor.running == {}


@pytest.mark.parametrize("code, signum", [(-9, signal.SIGKILL), (143, signal.SIGTERM), (130, signal.SIGINT)])
def test_a_stage_stopped_by_a_signal_is_retried_as_killed(monkeypatch, code, signum):
    monkeypatch.setattr(parallel.ray, "get", lambda ref: (code, "train: interrupted"))
    killed = []
    executor = SimpleNamespace(running={"ref": "train@a-0"}, killed=lambda *args: killed.append(args))
    parallel.Executor.finish(executor, "ref", None)
    assert killed == [("train@a-0", signum, "train: interrupted")]


def test_any_other_exit_status_fails_the_run(monkeypatch):
    monkeypatch.setattr(parallel.ray, "get", lambda ref: (2, "train: error: bad"))
    executor = SimpleNamespace(running={"ref": "train@a-0"})
    with pytest.raises(parallel.StageFailed, match=r"failed \(exit 2\)"):
        parallel.Executor.finish(executor, "ref", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs", "0"], "--jobs: at least 1"),
        (["--cpus-per-run", "0"], "--cpus-per-run: more than 0"),
        (["--gpus-per-run", "1.5"], "--gpus-per-run: a fraction of one GPU or a whole number"),
    ],
)
def test_resources_ray_could_never_schedule_are_refused_before_it_starts(args, message, monkeypatch, capsys):
    monkeypatch.setattr(parallel, "start_ray", lambda args: pytest.fail("Ray started"))
    with pytest.raises(SystemExit) as exit_:
        parallel.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_an_unknown_target_is_refused_before_ray_starts(monkeypatch, capsys):
    monkeypatch.setenv("COMPRESSNET_ROOT", str(Path(__file__).parents[1]))  # this project's dvc.yaml
    monkeypatch.chdir(Path(__file__).parents[1])  # main moves to the root: chdir here so that the move is undone
    monkeypatch.setattr(parallel.tracking, "setup", lambda name: pytest.fail("MLflow's store set up"))
    monkeypatch.setattr(parallel, "start_ray", lambda args: pytest.fail("Ray started"))
    with pytest.raises(SystemExit) as exit_:
        parallel.main(["--jobs", "1", "evaluate@model01-9"])
    assert exit_.value.code == 2 and "no stage 'evaluate@model01-9' in dvc.yaml" in capsys.readouterr().err


def test_a_stopped_run_names_its_own_command_interpreter_options_and_targets_included(monkeypatch, tmp_path):
    argv = ["--jobs", "1", "--address", "head:6379", "evaluate@model01-1"]
    monkeypatch.setattr(parallel.sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    command = parallel.command_to_go_on(argv, tmp_path)
    assert command == ".venv/bin/python -m pipeline.tools.parallel --jobs 1 --address head:6379 evaluate@model01-1"
    elsewhere = parallel.command_to_go_on(argv, tmp_path / "another-checkout")
    assert elsewhere.startswith(f"{tmp_path}/.venv/bin/python -m pipeline.tools.parallel --jobs 1")
