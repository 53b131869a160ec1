"""Run folders and the queue tried as an attacker and a careless user would (Hardening III, issue 29 items 5-8
and 13-15): a worker killed mid-launch, a queued config edited into nonsense, status.json that is JSON but not
a status, markup in every value a folder holds, links leading out of a folder, a crafted pid, a huge log.

Processes are real (the stand-in trainer of test_runs, workers, a `sleep` to protect); the app runs under Pilot.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.app import make_app, make_workspace, settle, tiny_config, write_run
from support.waiting import wait_until
from test_queue import WORKER, queued_stand_ins
from test_runs import DEADLINE_S, STAND_IN, STAND_IN_TRAINER, make_config
from test_runs_hardening import launcher_lines, trainers_started
from textual.widgets import DataTable, Static

from glmcore.compare import compare_runs
from glmcore.queue import Queue, QueueSettings
from glmcore.runs import (
    KILL_AFTER_SPAWN_VARIABLE,
    RunError,
    RunStore,
    launch,
    process_start_time,
    resume,
    stop,
)
from glmcore.workspace import Workspace
from glmtui.commands.compare import show_comparison
from glmtui.commands.logs import show_logs
from glmtui.commands.runs import show_runs
from glmtui.commands.stop import stop_run
from glmtui.screens.compare import CompareScreen
from glmtui.screens.evaluate import EvaluateScreen
from glmtui.screens.runs import RunsScreen
from glmtui.screens.training import TrainingScreen

REPO_ROOT = Path(__file__).resolve().parents[1]


def start_worker(
    workspace: Path, go: Path, log: Path, program: tuple[str, ...], **env: str
) -> subprocess.Popen:
    with open(log, "a") as output:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, str(workspace), str(go), *program],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env},
        )


# 5: the claim is the spawn


def test_a_worker_killed_between_spawn_and_record_leaves_one_trainer(tmp_path: Path) -> None:
    queue = Queue(Workspace(tmp_path / "ws"))
    QueueSettings(poll_s=0.05).save(queue.settings_path)
    (run,) = queued_stand_ins(queue, tmp_path, [3])
    go, trainer_go = tmp_path / "go", tmp_path / "trainer-go"
    go.touch()
    # A trainer slow to record itself (importing torch, say): it waits before doing anything.
    slow_trainer = (
        sys.executable,
        "-c",
        f"import pathlib, time\nwhile not pathlib.Path({str(trainer_go)!r}).exists(): time.sleep(0.01)\n"
        + STAND_IN_TRAINER,
    )

    first = start_worker(
        queue.workspace.root, go, tmp_path / "first.log", slow_trainer, **{KILL_AFTER_SPAWN_VARIABLE: "1"}
    )
    assert first.wait(timeout=DEADLINE_S) == -signal.SIGKILL
    assert run.stored_status().state == "queued" and launcher_lines(run) == 1  # spawned, never recorded

    second = start_worker(queue.workspace.root, go, tmp_path / "second.log", slow_trainer)
    said = tmp_path / "second.log"
    wait_until(
        lambda: (
            f"{run.id} waits: not started: run {run.id} already has a live training process"
            in said.read_text()
        ),
        "the second worker to find the first one's trainer",
    )
    assert launcher_lines(run) == 1

    trainer_go.touch()
    assert second.wait(timeout=DEADLINE_S) == 0, said.read_text()
    wait_until(lambda: run.status().state == "finished", "the one trainer to finish")
    assert trainers_started(run) == 1 and launcher_lines(run) == 1
    assert [event["kind"] for event in run.events()].count("start") == 1


def test_a_trainer_started_by_hand_leaves_a_run_another_trainer_holds_alone(tmp_path: Path) -> None:
    run = RunStore(tmp_path / "runs").create(make_config(tmp_path))
    pid = launch(run, detach=True, program=STAND_IN)
    wait_until(lambda: run.stored_status().step > 0, "the launched trainer to take steps")

    by_hand = subprocess.run([*STAND_IN, str(run.path)], capture_output=True, text=True, timeout=DEADLINE_S)

    assert by_hand.returncode != 0
    assert f"run {run.id} is already being trained by another live process" in by_hand.stderr
    assert run.stored_status().pid == pid and trainers_started(run) == 1
    assert stop(run, force=True, grace=5).state == "stopped"


# 6: a queued config that cannot start


def test_queued_runs_whose_config_cannot_start_leave_the_queue_and_the_others_start(tmp_path: Path) -> None:
    queue = Queue(Workspace(tmp_path / "ws"))
    QueueSettings(poll_s=0.05).save(queue.settings_path)
    not_toml, bad_rate, healthy = queued_stand_ins(queue, tmp_path, [2, 2, 2])
    not_toml.config_path.write_text("name = 'q0\nmax_steps = 2\n")
    bad_rate.config_path.write_text(
        bad_rate.config_path.read_text().replace("learning_rate = 0.02", "learning_rate = -1")
    )
    said: list[str] = []

    queue.work(program=STAND_IN, say=said.append)  # returns once nothing is queued; it never dies on one

    assert not_toml.status().state == "created"
    assert not_toml.status().reason.startswith(f"never launched: {not_toml.config_path} is not valid TOML")
    assert bad_rate.status().state == "created"
    assert bad_rate.status().reason == (
        f"never launched: {bad_rate.config_path}: learning_rate: must be more than 0, not -1.0"
    )
    for run in (not_toml, bad_rate):
        assert any(f"{run.id} left the queue: {run.config_path}" in line for line in said), said
    wait_until(lambda: healthy.status().state == "finished", "the healthy run to finish")
    assert queue.runs() == []


# 7 and 8: status.json that is not a status; markup in every value of a folder

NOT_A_STATUS = {
    "20260501-090000-list": ([], "it holds a JSON list, not an object"),
    "20260501-090001-text": ("running", "it holds a JSON str, not an object"),
    "20260501-090002-number-state": ({"state": 5}, "its state is 5, not str"),
}
FUTURE = "20260501-110000-future[b]"  # a folder may be named anything
GOOD = "20260501-100000-good"


def crafted_workspace(root: Path) -> Workspace:
    """A run a later glmtui wrote (a state, reason and host holding markup), a good run and three whose
    status.json is JSON but not a status."""
    workspace = make_workspace(root, with_model=False)
    config = tiny_config(workspace)
    future = write_run(
        workspace, FUTURE, config, state="paused-by-v9 [/]", step=3, losses=[2.0], host="node[/]1"
    )
    future.write_status(reason="[/] moved to [bold]v9")
    write_run(workspace, GOOD, config, state="finished", step=30, losses=[2.0, 1.5])
    for run_id, (content, _) in NOT_A_STATUS.items():
        write_run(workspace, run_id, config, state="finished", step=30, losses=[]).status_path.write_text(
            json.dumps(content)
        )
    return workspace


def test_runs_and_compare_list_a_run_whose_status_is_not_a_status_as_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = crafted_workspace(tmp_path / "ws")
    monkeypatch.setenv("GLMTUI_HOME", str(workspace.root))

    assert show_runs(argparse.Namespace()) == 0
    listed = capsys.readouterr().out
    rows = {line.split()[0]: " ".join(line.split()) for line in listed.splitlines()[1:] if line[:1] != " "}
    assert rows[GOOD].startswith(f"{GOOD} finished — 30/30 1.5000")  # no model folder: family unknown
    assert " paused-by-v9 [/] " in rows[FUTURE]
    for run_id, (_, problem) in NOT_A_STATUS.items():  # the reason wraps in its column
        status_path = workspace.runs_dir / run_id / "status.json"
        assert f"{run_id} unreadable: {status_path} cannot be read ({problem})" in " ".join(listed.split())

    assert show_comparison(argparse.Namespace(runs=[GOOD, *NOT_A_STATUS], by=None)) == 0
    compared = " ".join(capsys.readouterr().out.split())
    assert "4 runs, best first by final loss" in compared
    assert (
        f"1 {GOOD.replace('-good', '')}" not in compared
    )  # rows are by name: the good run's is tiny-ptuning
    assert "1 tiny-ptuning finished 1.5000" in compared
    for number, run_id in enumerate(NOT_A_STATUS, start=2):
        assert f"{number} {run_id} unreadable: " in compared


async def test_every_screen_shows_folder_values_as_text_and_unreadable_runs_as_such(tmp_path: Path) -> None:
    workspace = crafted_workspace(tmp_path / "ws")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table", DataTable)
        states = {str(table.get_row_at(index)[0]): str(table.get_row_at(index)[1]) for index in range(5)}
        assert states[FUTURE] == "paused-by-v9 [/]" and states[GOOD] == "finished"
        assert {states[run_id] for run_id in NOT_A_STATUS} == {"unreadable"}
        detail = str(screen.query_one("#runs-detail", Static).render())
        assert "host node[/]1" in detail and "paused-by-v9 [/]: [/] moved to [bold]v9" in detail

        await pilot.press("s")  # refused: the error toast carries the state
        await settle(pilot)
        errors = [toast.message for toast in app.notifications if toast.severity == "error"]
        # The one error is the refusal: the unreadable runs raise none.
        assert len(errors) == 1 and "(it is paused-by-v9 [/])" in errors[0], errors

        await pilot.press("space", "space", "space", "v")  # the future run, the good one, an unreadable one
        await settle(pilot)
        assert isinstance(app.screen, CompareScreen)
        compared = app.screen.query_one("#compare-table", DataTable)
        rows = [[str(cell) for cell in compared.get_row_at(index)] for index in range(compared.row_count)]
        assert [row[2] for row in rows][:2] == ["finished", "paused-by-v9 [/]"]
        assert rows[2][1] == "20260501-090002-number-state" and rows[2][2].startswith("unreadable: ")

        await pilot.press("escape", "up", "up", "up", "enter")
        await settle(pilot)
        assert isinstance(app.screen, TrainingScreen)
        title = str(app.screen.query_one("#training-title", Static).render())
        assert title == f"{FUTURE}  paused-by-v9 [/] — [/] moved to [bold]v9"

        await pilot.press("e")
        await settle(pilot)
        assert isinstance(app.screen, EvaluateScreen)
        title = str(app.screen.query_one("#evaluate-title", Static).render())
        assert title == f"{FUTURE}: base model vs prefix checkpoints"


# 13: links leading out of a run folder


@pytest.mark.parametrize("name", ["events.jsonl", "train.log", "checkpoints"])
def test_a_run_folder_with_a_link_inside_is_refused_and_nothing_outside_is_written(
    tmp_path: Path, name: str
) -> None:
    run = RunStore(tmp_path / "runs").create(make_config(tmp_path))
    run.write_status(state="stopped")
    outside = tmp_path / "outside"
    outside.mkdir() if name == "checkpoints" else outside.write_text("someone else's file\n")
    target = run.path / name
    if target.is_dir():
        target.rmdir()
    else:
        target.unlink(missing_ok=True)
    target.symlink_to(outside)

    with pytest.raises(RunError) as refused:
        resume(run, detach=True, program=STAND_IN)

    assert str(refused.value) == (
        f"{target} is a symbolic link; glmtui does not follow links inside a run folder (one could lead "
        "outside it): replace it with the real file or folder"
    )
    assert (
        (list(outside.iterdir()) == [])
        if outside.is_dir()
        else outside.read_text() == "someone else's file\n"
    )
    assert run.stored_status().state == "stopped"


def test_appending_an_event_or_reading_the_log_never_goes_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "ws"))
    run = RunStore(tmp_path / "ws" / "runs").create(make_config(tmp_path))
    outside = tmp_path / "outside"
    outside.write_text("secret\n")
    for path in (run.events_path, run.log_path):
        path.unlink(missing_ok=True)
        path.symlink_to(outside)

    with pytest.raises(RunError, match="events.jsonl is a symbolic link"):
        run.append_event("log", step=1)
    assert show_logs(argparse.Namespace(run=run.id, lines=0, follow=False, events=False)) == 1

    assert outside.read_text() == "secret\n"
    assert "train.log is a symbolic link; glmtui does not follow links" in capsys.readouterr().err


# 14: a forced stop signals only the run's own trainer


@pytest.mark.parametrize("recorded_start", ["exact", "absent"])
def test_force_stop_never_signals_a_process_that_is_not_the_runs_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], recorded_start: str
) -> None:
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "ws"))
    run = RunStore(tmp_path / "ws" / "runs").create(make_config(tmp_path))
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        wait_until(lambda: process_start_time(bystander.pid), "the bystander to start")
        started = process_start_time(bystander.pid) if recorded_start == "exact" else None
        run.write_status(
            state="running", pid=bystander.pid, pid_start_time=started, host=socket.gethostname()
        )

        assert stop_run(argparse.Namespace(run=run.id, force=True, wait=0.0)) == 0

        assert bystander.poll() is None  # alive: never signalled
        status = run.status()
        assert status.state == "crashed"
        said = " ".join(capsys.readouterr().out.split())
        assert f"Run {run.id} crashed at step 0/1000000: " in said
        assert "so glmtui signalled nothing" in said and "so glmtui signalled nothing" in status.reason
        if recorded_start == "exact":
            assert f"pid {bystander.pid} runs `sleep 60`, not run {run.id}'s training" in status.reason
    finally:
        bystander.kill()
        bystander.wait()


# 15: logs stream


def test_logs_prints_the_last_lines_200_by_default_and_the_whole_file_with_n_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "ws"))
    run = RunStore(tmp_path / "ws" / "runs").create(make_config(tmp_path))
    lines = [f"line {number}" for number in range(1, 301)]
    run.log_path.write_text("\n".join(lines))  # the last line not yet ended

    def printed(count: int | None) -> list[str]:
        options = argparse.Namespace(
            run=run.id, lines=200 if count is None else count, follow=False, events=False
        )
        assert show_logs(options) == 0
        return capsys.readouterr().out.splitlines()

    assert printed(None) == lines[-200:]
    assert printed(3) == lines[-3:]
    assert printed(0) == lines
    assert printed(1000) == lines


MEASURED_CLI = """
import re, runpy, sys
sys.argv = ["glmtui", *sys.argv[1:]]
try:
    runpy.run_module("glmtui.cli", run_name="__main__")
except SystemExit as end:
    code = end.code
peak = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]
print("peak", int(peak) * 1024, file=sys.stderr)
sys.exit(code)
"""
"""`glmtui` that says its peak resident memory (this process's own, since exec) last on stderr."""


def test_logs_of_a_huge_log_runs_in_little_memory(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    run = RunStore(workspace / "runs").create(make_config(tmp_path))
    with open(run.log_path, "wb") as log:  # a sparse 128 MiB of one unended line, then three lines
        log.truncate(128 * 2**20)
        log.seek(0, os.SEEK_END)
        log.write(b"\nthe end is near\nnearer\nhere\n")

    peaks = {}
    for lines in ("3", "0"):
        command = subprocess.run(
            [sys.executable, "-c", MEASURED_CLI, "--workspace", str(workspace), "logs", run.id, "-n", lines],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE if lines == "3" else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=DEADLINE_S,
        )
        assert command.returncode == 0, command.stderr
        peaks[lines] = int(command.stderr.split()[-1])
        if lines == "3":
            assert command.stdout == b"the end is near\nnearer\nhere\n"
    assert max(peaks.values()) < 64 * 2**20, peaks  # reading the whole file takes 128 MiB at least


# issue 30 §7: an exact name wins


def test_an_exact_run_name_wins_over_the_sweep_named_after_it(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    base = store.create(make_config(tmp_path, name="demo-ptuning"))
    for label in ("lr0.01", "lr0.02"):
        store.create(make_config(tmp_path, name=f"demo-ptuning {label}"))

    assert store.resolve("demo-ptuning") == base
    assert [summary.run for summary in compare_runs(store, ["demo-ptuning"]).runs] == [base]

    again = store.create(make_config(tmp_path, name="demo-ptuning"))
    with pytest.raises(RunError) as ambiguous:
        store.resolve("demo-ptuning")
    assert str(ambiguous.value) == f"2 runs are named 'demo-ptuning' ({again.id}, {base.id}); give the id"
