"""The executor's progress bar counts the stages that run: those DVC finds up to date leave its total."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from pipeline.tools import parallel

UPSTREAM = {"prepare": set(), "train@a-0": {"prepare"}, "report": {"train@a-0"}}


def test_stages_found_up_to_date_leave_the_bar_and_a_changed_one_is_dispatched(monkeypatch):
    changed = {"report": "python -m pipeline.stages.report"}
    monkeypatch.setattr(parallel, "command_if_changed", lambda root, name, clear_outputs: changed.get(name))
    executor = SimpleNamespace(root=Path("."), args=SimpleNamespace(remote=None), upstream=UPSTREAM, done=set())
    executor.running, executor.slots, submitted = {}, 1, []
    executor.ready = lambda: parallel.Executor.ready(executor)
    executor.waiting = lambda: parallel.Executor.waiting(executor)
    executor.submit = lambda name, cmd: submitted.append((name, cmd)) or f"ref of {name}"

    with tqdm(total=len(UPSTREAM), file=io.StringIO()) as bar:
        for _ in UPSTREAM:  # each call dispatches what the previous one made ready
            parallel.Executor.dispatch(executor, bar)
        assert (bar.total, bar.n) == (1, 0)  # prepare and train were up to date; report runs, not finished yet
    assert executor.done == {"prepare", "train@a-0"} and submitted == [("report", changed["report"])]
    assert executor.running == {"ref of report": "report"}
