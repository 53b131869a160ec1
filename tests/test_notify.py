"""The workspace's notification command, with real processes: a crash and the end of a sweep are each reported
once, by whichever of two watching processes (`glmtui runs`, a queue worker) finds them first, and a finished run is not reported again
by them (its own training process reports it: tests/test_train_eval.py); the command gets the facts as environment
variables, and a command written as a shell line is refused. The trainer here is test_runs.py's stand-in, which
keeps the run folder as the real one does; how the real one is seen crashing is tests/test_train.py's."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from test_runs import STAND_IN, wait_until
from test_runs import make_config as stand_in_config
from test_runs_hardening import glmtui
from test_train_eval import configure_recorder, read_calls

from glmcore.notify import NotifyError, NotifySettings
from glmcore.runs import Run, RunStore, launch, wait_for_end
from glmcore.sweep import create as create_sweep
from glmcore.sweep import expand

pytestmark = pytest.mark.slow


def watch_twice(workspace: Path, times: int = 2) -> None:
    """`glmtui runs` and a queue worker (`glmtui queue work`, which finds the queue empty) at once, ``times``
    over: each reads every run and reports what it finds ended."""
    for _ in range(times):
        watchers = [glmtui(workspace, "runs"), glmtui(workspace, "queue", "work")]
        for watcher in watchers:
            _, errors = watcher.communicate(timeout=60)
            assert watcher.returncode == 0, errors


def crash(store: RunStore, tmp_path: Path, name: str) -> tuple[Run, int]:
    """A stand-in run killed with SIGKILL after a few steps: crashed, with nobody left to say so."""
    run = store.create(stand_in_config(tmp_path, name=name))
    pid = launch(run, detach=True, program=STAND_IN)
    wait_until(lambda: run.stored_status().step >= 2, "the trainer to take steps")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: run.status().state == "crashed", "the crash to show")
    return run, pid


def test_a_crash_is_reported_once_by_the_first_of_two_watching_processes(tmp_path):
    workspace = tmp_path / "ws"
    calls = configure_recorder(workspace, tmp_path)
    store = RunStore(workspace / "runs")
    run, pid = crash(store, tmp_path, "first")
    watch_twice(workspace)
    [call] = read_calls(calls, 1)
    assert call["GLMTUI_EVENT"] == "crashed" and call["GLMTUI_RUN_ID"] == run.id
    assert f"pid {pid}" in call["GLMTUI_REASON"]
    assert int(call["GLMTUI_STEP"]) >= 2

    # The queue worker alone finds a crash too.
    later, _ = crash(store, tmp_path, "second")
    worker = glmtui(workspace, "queue", "work")
    _, errors = worker.communicate(timeout=60)
    assert worker.returncode == 0, errors
    assert [call["GLMTUI_RUN_ID"] for call in read_calls(calls, 2)] == [run.id, later.id]


def test_a_sweep_end_is_reported_once_and_its_finished_runs_are_not_reported_again(tmp_path):
    workspace = tmp_path / "ws"
    calls = configure_recorder(workspace, tmp_path)
    store = RunStore(workspace / "runs")
    base = stand_in_config(tmp_path, max_steps=3)
    sweep = create_sweep(store, base, expand(base, {"seed": [1, 2]}))
    watch_twice(workspace, times=1)  # nothing has ended yet
    for run in sweep.runs:
        launch(run, detach=True, program=STAND_IN)
    for run in sweep.runs:
        assert wait_for_end(run, timeout=60).state == "finished"

    watch_twice(workspace)
    [call] = read_calls(calls, 1)
    assert call["GLMTUI_EVENT"] == "sweep-ended" and call["GLMTUI_SWEEP"] == sweep.id
    assert call["GLMTUI_SWEEP_STATES"] == "finished=2"


def test_a_command_written_as_a_shell_line_is_refused_with_what_to_write(tmp_path):
    (tmp_path / "notify.toml").write_text('command = "notify-send glmtui $RUN"\n', encoding="utf-8")
    with pytest.raises(NotifyError, match=r'list of arguments such as \["notify-send", "glmtui"\]'):
        NotifySettings.load(tmp_path)
    (tmp_path / "notify.toml").write_text(f"command = {json.dumps(['true'])}\n", encoding="utf-8")
    assert NotifySettings.load(tmp_path).command == ("true",)
